"""train_cehrgpt.sh's decisions (step 4), answered as shell assignments (see shell_settings.py).

    python -m cehrgpt_tutorials.pipeline.training_options plan SCRIPT [OPTIONS] [RUNNER_ARGS...]
        the options checked, the inputs found, the profile's runner arguments, who tokenizes
    python -m cehrgpt_tutorials.pipeline.training_options launch NPROC
        the device and its data loader arguments, the processes' threads (imports torch: after the lock)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir
from cehrgpt_tutorials.pipeline.profiles import PROFILES, runner_arguments
from cehrgpt_tutorials.pipeline.run_stamp import STAMP_NAME
from cehrgpt_tutorials.pipeline.shell_settings import (
    answer_for_script,
    one_of,
    parse_options,
    positive_whole_number,
    require_use_tf_off,
    shell_assignments,
    shell_help,
    shell_words,
    visible_cores,
)

DEFAULT_PROFILE = "demo"
TOKENIZATIONS = ("auto", "prepare", "runner")
# From this much training Parquet, prepare_dataset.py tokenizes before the runner (same dataset, 3x
# faster per worker); below it, its second Python start (~3 s) costs more than it saves
# (bench/RESULTS.md: 11.4 s against 7.9 s on the demo, 64 s against 107 s at 100x).
PREPARE_MIN_MB = 16
PROFILE_NAMES = f"{', '.join(list(PROFILES)[:-1])} or {list(PROFILES)[-1]}"
VALUE_OPTIONS = {"--profile": f" ({PROFILE_NAMES})", "--data-folder": "", "--model-dir": "", "--nproc": "",
                 "--tokenization": " (auto, prepare or runner)"}

USAGE = """\
Usage: {script} [--profile {profile_choices}] [--data-folder DIR] [--model-dir DIR] [--fresh] [--nproc N]
          [--tokenization auto|prepare|runner] [RUNNER_ARGS...]

Pretrains CEHR-GPT with cehrgpt.runners.hf_cehrgpt_pretrain_runner and prints the exact command.

  --profile NAME      {profiles}
  --data-folder DIR   patient sequences (default $CEHR_GPT_DATA_DIR/patient_sequence); a folder with
                      train/ and test/ (step 2's split) trains on train/ only
  --model-dir DIR     output: tokenizer, checkpoints, model (default $CEHR_GPT_MODEL_DIR)
  --fresh             start over: move MODEL_DIR's previous run aside to MODEL_DIR.old-<time>
                      (only a folder this script made; it is never deleted)
  --nproc N           N training processes under torchrun (default 1): one per GPU for several
                      GPUs (NCCL), or N CPU processes (gloo); per-device batch sizes are per process
  --tokenization MODE  who tokenizes the sequences before the first step (the same dataset either way):
                      prepare: cehrgpt_tutorials/pipeline/prepare_dataset.py, before the runner (3x faster
                               per worker); runner: the runner itself, as cehrgpt ships it;
                      auto (default): prepare from {prepare_min_mb} MB of training Parquet, else runner
  --print-args        print the runner command one word per line and exit (bench/train_bench.py uses it)
  RUNNER_ARGS         anything else goes to the runner after the profile's arguments, so it wins,
                      e.g. --num_train_epochs 20 --learning_rate 5e-4 (see the runner's --help)
  -h, --help          show this help

Run 'source setup_env.sh' first (it sets USE_TF=0 and the folders).
"""


def usage(script: str) -> str:
    lines = [f"{name}{' (default)' if name == DEFAULT_PROFILE else ''}: {profile.summary}"
             for name, profile in PROFILES.items()]
    profiles = f"\n{' ' * 22}".join(line.replace("\n", f"\n{' ' * 28}") for line in lines)
    return USAGE.format(script=script, profiles=profiles, prepare_min_mb=PREPARE_MIN_MB,
                        profile_choices="|".join(PROFILES))


@dataclass(frozen=True)
class TrainingPlan:
    """What train_cehrgpt.sh runs, decided before anything slow (and before the model folder's lock)."""

    profile: str
    data_folder: Path  # physical path; step 2's train/ when it split the patients
    model_dir: Path  # physical path, made if missing
    fresh: bool  # move a previous run aside first
    print_args: bool  # print the runner command and stop
    nproc: int  # training processes (torchrun when more than 1)
    tokenization: str  # prepare (prepare_dataset.py first) or runner
    tokenization_note: str  # why, for the "tokenizing:" line
    profile_arguments: list[str]
    runner_extra: list[str]  # the user's runner arguments, as typed (last: theirs win)


def training_data_folder(given: str) -> Path:
    """The training sequences: step 2's train/ when it split the patients (test/ stays unseen)."""
    folder = given or str(cehr_gpt_data_dir() / "patient_sequence")
    if os.path.isdir(f"{folder}/train"):
        folder = f"{folder}/train"
    if not os.path.isdir(folder):
        raise PipelineError(f"no patient sequences at '{folder}' (run step 2, create_cehrgpt_pretraining_data.sh, "
                            "or pass --data-folder)")
    if not any(name.endswith(".parquet") for name in os.listdir(folder)):
        raise PipelineError(f"'{folder}' has no .parquet files (expected cehrbert_data's patient_sequence output)")
    return Path(folder).resolve()


def training_model_dir(given: str, fresh: bool, print_args: bool) -> Path:
    """The model folder, made if missing. One this script did not make is neither used nor moved."""
    if not given:
        raise PipelineError("--model-dir is empty")
    try:
        os.makedirs(given, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create model folder '{given}' ({error.strerror or error})") from error
    model_dir = Path(given).resolve()
    if model_dir == Path("/"):
        raise PipelineError("--model-dir is the root folder /")
    if not print_args and not (model_dir / STAMP_NAME).is_file() and any(model_dir.iterdir()):
        if fresh:
            raise PipelineError(f"--fresh: '{model_dir}' was not made by this script (no {STAMP_NAME}), so it is "
                                "left as it is; choose another --model-dir")
        raise PipelineError(f"'{model_dir}' is not empty and was not made by this script (no {STAMP_NAME}): "
                            "choose another --model-dir or empty it")
    return model_dir


def tokenization_choice(mode: str, data_folder: Path) -> tuple[str, str]:
    """(prepare or runner, the reason in a few words); auto decides by the training Parquet's size."""
    if mode != "auto":
        return mode, f"--tokenization {mode}"
    total = sum(path.stat().st_size for path in Path(data_folder).iterdir()
                if path.name.endswith(".parquet") and path.is_file())
    megabytes = total // 2**20
    chosen = "prepare" if megabytes >= PREPARE_MIN_MB else "runner"
    return chosen, f"{megabytes} MB of sequences; prepare_dataset.py from {PREPARE_MIN_MB} MB"


def training_plan(words: list[str]) -> TrainingPlan | None:
    """train_cehrgpt.sh's command line checked and its inputs found, in the order the errors are said;
    None when the usage is wanted."""
    line = parse_options(words, VALUE_OPTIONS, flags=("--fresh", "--print-args"))
    if line.help:
        return None
    nproc = positive_whole_number("--nproc", line.values.get("--nproc", "1"))
    mode = one_of("--tokenization", line.values.get("--tokenization", "auto"), TOKENIZATIONS)
    profile = line.values.get("--profile", DEFAULT_PROFILE)
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile '{profile}' ({PROFILE_NAMES})")
    data_folder = training_data_folder(line.values.get("--data-folder", ""))
    fresh, print_args = "--fresh" in line.flags, "--print-args" in line.flags
    model_dir = training_model_dir(line.values.get("--model-dir", str(cehr_gpt_model_dir())), fresh, print_args)
    require_use_tf_off()
    tokenization, note = tokenization_choice(mode, data_folder)
    return TrainingPlan(profile, data_folder, model_dir, fresh, print_args, nproc, tokenization, note,
                        runner_arguments(PROFILES[profile]), line.passed_through)


def plan_answer(arguments: list[str]) -> str:
    script, *words = arguments
    plan = training_plan(words)
    if plan is None:
        return shell_help(usage(script))
    return shell_assignments({
        "PROFILE": plan.profile, "DATA_FOLDER": plan.data_folder, "MODEL_DIR": plan.model_dir,
        "FRESH": int(plan.fresh), "PRINT_ARGS": int(plan.print_args), "NPROC": plan.nproc,
        "TOKENIZATION": plan.tokenization, "TOKENIZATION_NOTE": plan.tokenization_note,
        "PROFILE_ARGS": shell_words(plan.profile_arguments), "RUNNER_EXTRA": shell_words(plan.runner_extra)})


@dataclass(frozen=True)
class Launch:
    """Where the runner trains and how it feeds itself."""

    device: str  # for the "profile ... on DEVICE" line
    loader_arguments: list[str]  # runner arguments: data loader workers, the distributed backend
    threads_per_process: int | None  # OMP_NUM_THREADS for CPU processes sharing the cores; None: leave it


def launch_settings(nproc: int, cores: int, cuda: bool) -> Launch:
    """A GPU gets data loader workers so collation keeps up; on CPU, workers would only compete with the
    training threads for the same cores. Several processes: NCCL between GPUs, gloo on CPU, where the
    processes share the cores (torchrun would give each a single thread). --use_cpu: without it the
    Trainer on a machine without a GPU leaves torchrun's processes unaware of each other, each training
    on all the data."""
    if cuda:
        device, loader = "cuda", ["--dataloader_num_workers", "4", "--dataloader_prefetch_factor", "4"]
    else:
        device, loader = f"cpu ({cores} cores)", ["--dataloader_num_workers", "0"]
    threads = None
    if nproc > 1:
        loader += ["--ddp_backend", "nccl"] if cuda else ["--use_cpu", "true", "--ddp_backend", "gloo"]
        threads = None if cuda else max(1, cores // nproc)
        device = f"{device}, {nproc} processes"
    return Launch(device, loader, threads)


def cuda_available() -> bool:
    """Whether torch sees a GPU (the Trainer then uses it anyway); no torch means no GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def launch_answer(arguments: list[str]) -> str:
    nproc = positive_whole_number("--nproc", arguments[0])
    cores = visible_cores()  # before OMP_NUM_THREADS is set below (nproc follows it)
    launch = launch_settings(nproc, cores, cuda_available())
    exports: dict[str, object] = {}
    if launch.threads_per_process is not None and not os.environ.get("OMP_NUM_THREADS"):
        exports["OMP_NUM_THREADS"] = launch.threads_per_process
    if nproc > 1:
        exports["PYTHONUNBUFFERED"] = 1  # python -u reaches torchrun only; its runners' lines should come as they happen
    return shell_assignments({"CORES": cores, "DEVICE": launch.device, "LOADER_ARGS": shell_words(launch.loader_arguments)},
                        exports)


if __name__ == "__main__":
    answer_for_script({"plan": plan_answer, "launch": launch_answer})
