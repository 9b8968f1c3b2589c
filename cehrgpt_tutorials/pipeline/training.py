"""Step 4's decisions about the model folder: resume, refuse or start over; which checkpoints can be
resumed from; and whether the model in it is finished.

`start_run` runs just before the runner. A folder whose stamp (run_stamp.py) matches the command about
to run is resumed; one whose stamp differs is refused, naming what changed, and kept as it is; --fresh
moves the previous run aside to MODEL_DIR.old-<time> first. Nothing is ever deleted.

The Trainer resumes from the highest-numbered `checkpoint-N` folder, whatever state it is in. A run
interrupted while writing one leaves it half-written (the Trainer writes trainer_state.json last), and
every later run then dies on the missing file. `set_aside_incomplete_checkpoints` moves such folders
into MODEL_DIR/incomplete_checkpoints/ (never deletes them) before the runner starts, so it resumes
from the last complete one.

The runner writes the final model into MODEL_DIR itself, file by file. `start_run` writes
TRAINING_INCOMPLETE before it starts and `finish_run` removes it once the runner has finished, so a
model folder with that file is one whose training has not finished: `unfinished_model_problem` says
so, and the steps that read a model (generation, prediction) refuse it.

    python -m cehrgpt_tutorials.pipeline.training start-run [--fresh] MODEL_DIR DATA_FOLDER -- COMMAND...
    python -m cehrgpt_tutorials.pipeline.training finish-run MODEL_DIR
    python -m cehrgpt_tutorials.pipeline.training check-finished MODEL_DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail
from cehrgpt_tutorials.pipeline.run_stamp import STAMP_NAME, parse_stamp, stamp_changes, stamp_of

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils' rule for resumable folders
INCOMPLETE_CHECKPOINTS = "incomplete_checkpoints"
TRAINING_INCOMPLETE = "TRAINING_INCOMPLETE"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(folder: Path) -> str | None:
    """Why the Trainer could not resume from this checkpoint folder, or None when it can."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the Trainer writes it last)"
    try:
        if "global_step" not in json.loads(state.read_text()):
            return "trainer_state.json has no global_step"
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return f"trainer_state.json is unreadable ({error})"
    if not (folder / "config.json").is_file():
        return "no config.json"
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in WEIGHT_FILES):
        return "no model weights"
    return None


def set_aside_incomplete_checkpoints(model_dir: Path) -> list[tuple[Path, Path, str]]:
    """Move every checkpoint-N folder the Trainer could not resume from into incomplete_checkpoints/.

    Returns (old path, new path, why) for each folder moved.
    """
    model_dir = Path(model_dir)
    moved = []
    if not model_dir.is_dir():
        return moved
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in sorted(model_dir.iterdir()):
        if not (folder.is_dir() and CHECKPOINT_NAME.match(folder.name)):
            continue
        problem = checkpoint_problem(folder)
        if problem is None:
            continue
        aside = model_dir / INCOMPLETE_CHECKPOINTS / f"{folder.name}.{stamp}"
        aside.parent.mkdir(exist_ok=True)
        suffix = 1
        while aside.exists():
            aside, suffix = aside.with_name(f"{folder.name}.{stamp}-{suffix}"), suffix + 1
        os.rename(folder, aside)
        moved.append((folder, aside, problem))
    return moved


def training_not_finished(model_dir: Path) -> str | None:
    """Why the model in model_dir is not finished (train_cehrgpt.sh's marker is there), or None."""
    if (Path(model_dir) / TRAINING_INCOMPLETE).exists():
        return (f"the training in {model_dir} has not finished ({TRAINING_INCOMPLETE} is there): re-run "
                "train_cehrgpt.sh with the same arguments to finish it")
    return None


def unfinished_model_problem(model_dir: Path) -> str | None:
    """Why the model in model_dir cannot be used yet (training not finished, no model), or None."""
    model_dir = Path(model_dir)
    unfinished = training_not_finished(model_dir)
    if unfinished is not None:
        return unfinished
    if not (model_dir / "config.json").is_file():
        return f"no trained model in '{model_dir}' (no config.json): run step 4, train_cehrgpt.sh, or pass --model-dir"
    return None


def move_previous_run_aside(model_dir: Path) -> Path:
    """Move model_dir to model_dir.old-<time> and make it again, empty; returns where the run went."""
    model_dir = Path(model_dir)
    aside = model_dir.with_name(f"{model_dir.name}.old-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if aside.exists():
        aside = aside.with_name(f"{aside.name}-{os.getpid()}")
    try:
        os.rename(model_dir, aside)
    except OSError as error:
        raise PipelineError(f"--fresh: cannot move the previous run in {model_dir} aside to {aside} "
                            f"({describe_os_error(error)})") from error
    try:
        model_dir.mkdir()
    except OSError as error:
        raise PipelineError(f"cannot create model folder '{model_dir}' (the previous run is in {aside}): "
                            f"{describe_os_error(error)}") from error
    return aside


def start_run(model_dir: Path, data_folder: Path, command: list[str], fresh: bool,
              say: Callable[[str], None] = print) -> None:
    """Make model_dir ready for `command`: resume, refuse (PipelineError naming what changed) or start over.

    Writes the command's stamp and the TRAINING_INCOMPLETE marker; says what it did as it does it.
    """
    model_dir = Path(model_dir)
    stamp_file = model_dir / STAMP_NAME
    new = stamp_of(command, data_folder)
    if fresh and any(model_dir.iterdir()):
        aside = move_previous_run_aside(model_dir)
        say(f"--fresh: moved the previous run in {model_dir} to {aside} "
                    "(delete it yourself once you no longer need it)")
    elif stamp_file.is_file():
        changes = stamp_changes(parse_stamp(stamp_file.read_text()), new)
        if changes:
            raise PipelineError(
                f"the run in {model_dir} cannot be resumed with other data or arguments ({changes}): keep it and "
                f"train into another --model-dir, or add --fresh to move it aside to {model_dir}.old-<time> and "
                "start over")
        for folder, new_path, problem in set_aside_incomplete_checkpoints(model_dir):
            say(f"set aside {folder.name}: incomplete, {problem} (moved to {new_path}; delete it yourself)")
        if any(path.name.startswith("checkpoint-") for path in model_dir.iterdir()):
            say(f"resuming: same data and arguments as the checkpoint in {model_dir}")
    stamp_file.write_text(new.text())
    (model_dir / TRAINING_INCOMPLETE).write_text(
        f"train_cehrgpt.sh started at {datetime.datetime.now():%Y-%m-%d %H:%M:%S} and has not finished: "
        "re-run it with the same arguments to resume.\n")


def finish_run(model_dir: Path) -> None:
    """After the runner exited 0: check it wrote a model, then remove the TRAINING_INCOMPLETE marker."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"the runner exited 0 but wrote no model to {model_dir}")
    (model_dir / TRAINING_INCOMPLETE).unlink(missing_ok=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="action", required=True)
    start = commands.add_parser("start-run", help="resume, refuse or start over; stamp the run (before the runner)")
    start.add_argument("--fresh", action="store_true", help="move a previous run aside first")
    start.add_argument("model_dir", type=Path)
    start.add_argument("data_folder", type=Path)
    finish = commands.add_parser("finish-run", help="check the runner wrote a model; mark it finished")
    finish.add_argument("model_dir", type=Path)
    finished = commands.add_parser("check-finished", help="exit 1 with a one-line reason unless the model is usable")
    finished.add_argument("model_dir", type=Path)
    argv = sys.argv[1:] if argv is None else list(argv)
    # The training command goes after the first --, word for word (argparse would drop a later --).
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    arguments = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if arguments.action == "start-run" and not command:
        parser.error("start-run needs the training command after --")
    try:
        if arguments.action == "start-run":
            start_run(arguments.model_dir, arguments.data_folder, command, arguments.fresh,
                      say=lambda line: print(line, flush=True))
        elif arguments.action == "finish-run":
            finish_run(arguments.model_dir)
        else:
            problem = unfinished_model_problem(arguments.model_dir)
            if problem is not None:
                fail(problem)
    except PipelineError as error:
        fail(str(error))
    except OSError as error:
        fail(describe_os_error(error))


if __name__ == "__main__":
    main()
