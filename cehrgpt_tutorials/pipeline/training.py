"""Step 4's decisions about the model folder: which checkpoints can be resumed from, and whether the
model in it is finished.

The Trainer resumes from the highest-numbered `checkpoint-N` folder, whatever state it is in. A run
interrupted while writing one leaves it half-written (the Trainer writes trainer_state.json last), and
every later run then dies on the missing file. `set_aside_incomplete_checkpoints` moves such folders
into MODEL_DIR/incomplete_checkpoints/ (never deletes them) before the runner starts, so it resumes
from the last complete one.

The runner writes the final model into MODEL_DIR itself, file by file. train_cehrgpt.sh writes
TRAINING_INCOMPLETE before starting it and removes it once the runner has finished, so a model folder
with that file is one whose training has not finished: `unfinished_model_problem` says so, and the
steps that read a model (generation, prediction) refuse it.

    python -m cehrgpt_tutorials.pipeline.training set-aside-incomplete MODEL_DIR
    python -m cehrgpt_tutorials.pipeline.training check-finished MODEL_DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="action", required=True)
    aside = commands.add_parser("set-aside-incomplete", help="move checkpoints the Trainer cannot resume from aside")
    aside.add_argument("model_dir", type=Path)
    finished = commands.add_parser("check-finished", help="exit 1 with a one-line reason unless the model is usable")
    finished.add_argument("model_dir", type=Path)
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "set-aside-incomplete":
            for folder, new_path, problem in set_aside_incomplete_checkpoints(arguments.model_dir):
                print(f"set aside {folder.name}: incomplete, {problem} (moved to {new_path}; delete it yourself)")
        else:
            problem = unfinished_model_problem(arguments.model_dir)
            if problem is not None:
                fail(problem)
    except (PipelineError, OSError) as error:
        fail(str(error))


if __name__ == "__main__":
    main()
