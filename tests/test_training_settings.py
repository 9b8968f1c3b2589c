"""The decisions of steps 4 and 5's scripts, tested without running them: the training profiles, the
"same run?" stamp comparison, resume/refuse/start over, the scripts' command lines and the shell code
that hands the answers back (train_cehrgpt.sh, generate_synthetic.sh, restore_synthetic.sh)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import SCRIPTS
from helpers import file_contents

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.pipeline.profiles import PROFILES, runner_arguments, runner_word
from cehrgpt_tutorials.pipeline.run_stamp import (
    STAMP_FORMAT,
    STAMP_NAME,
    RunStamp,
    data_checksums,
    option_values,
    parse_stamp,
    shell_quote,
    stamp_changes,
    stamp_of,
    stamped_arguments,
)
from cehrgpt_tutorials.pipeline.shell_settings import (
    one_of,
    parse_options,
    positive_whole_number,
    shell_assignments,
    shell_help,
    shell_words,
    visible_cores,
)
from cehrgpt_tutorials.pipeline.synthetic_options import generation_answer, restore_answer, restored_tables
from cehrgpt_tutorials.pipeline.training import (
    INCOMPLETE_CHECKPOINTS,
    TRAINING_INCOMPLETE,
    finish_run,
    start_run,
)
from cehrgpt_tutorials.pipeline.training import main as training_main
from cehrgpt_tutorials.pipeline.training_options import (
    PREPARE_MIN_MB,
    launch_settings,
    plan_answer,
    tokenization_choice,
    training_plan,
)

RUNNER = ["python", "-u", "-m", "cehrgpt.runners.hf_cehrgpt_pretrain_runner"]


def shell_values(answer: str, names: list[str]) -> dict[str, str]:
    """What `eval "$answer"` sets in sh, read back NUL-separated."""
    script = 'eval "$1"; shift; for name in "$@"; do eval "printf \'%s\\0\' \\"\\${$name}\\""; done'
    output = subprocess.run(["sh", "-c", script, "sh", answer, *names], capture_output=True, check=True).stdout
    return dict(zip(names, output.decode().split("\0")[:-1], strict=True))


def shell_set_words(words: str) -> list[str]:
    """The positional parameters after `eval "set -- $words"` in sh."""
    output = subprocess.run(["sh", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "sh", words],
                            capture_output=True, check=True).stdout
    return output.decode().split("\0")[:-1]


# ---------------------------------------------------------------------------------------------
# Training profiles
# ---------------------------------------------------------------------------------------------


def test_each_profile_gives_the_runner_the_words_it_always_had():
    # The words are part of every run's stamp: a change here would refuse to resume existing runs.
    assert " ".join(runner_arguments(PROFILES["demo"])) == (
        "--backbone qwen2 --use_qk_norm true --hidden_size 192 --num_hidden_layers 6 --n_head 4 "
        "--max_position_embeddings 512 --resid_pdrop 0 --embd_pdrop 0 --attn_pdrop 0 "
        "--per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate 2e-3 --warmup_ratio 0.05 "
        "--num_train_epochs 6 --early_stopping_threshold 0")
    assert " ".join(runner_arguments(PROFILES["seed"])) == (
        "--hidden_size 192 --num_hidden_layers 4 --n_head 4 --max_position_embeddings 512 "
        "--per_device_train_batch_size 16 --per_device_eval_batch_size 16 --learning_rate 1e-3 --warmup_ratio 0.05 "
        "--num_train_epochs 8 --early_stopping_threshold 0")
    assert " ".join(runner_arguments(PROFILES["tiny"])) == (
        "--backbone qwen2 --use_qk_norm true --hidden_size 48 --num_hidden_layers 2 --n_head 2 "
        "--max_position_embeddings 512 --resid_pdrop 0 --embd_pdrop 0 --attn_pdrop 0 "
        "--per_device_train_batch_size 8 --per_device_eval_batch_size 8 --learning_rate 3e-3 --warmup_ratio 0.05 "
        "--num_train_epochs 10 --max_steps 150")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_has_a_hidden_size_the_time_token_head_and_the_heads_can_split(name):
    profile = PROFILES[name]
    assert profile.hidden_size % 3 == 0 and profile.hidden_size % profile.n_head == 0


def test_runner_words_are_written_the_way_the_runner_reads_them():
    assert [runner_word(value) for value in (True, False, 0.0, 2e-3, 5e-5, 0.05, 1.5, 150, "qwen2")] == [
        "true", "false", "0", "2e-3", "5e-5", "0.05", "1.5", "150", "qwen2"]


# ---------------------------------------------------------------------------------------------
# The run stamp: same run?
# ---------------------------------------------------------------------------------------------


def test_shell_quote_is_shell_helpers_rule():
    words = ["plain", "a/b.c:d=e@f%g+h,i-j", "", "a b", "*", "it's", "$HOME", "x\ty", "--run_name"]
    script = f'. "{SCRIPTS / "shell_helpers.sh"}"; for word in "$@"; do shell_quote "$word"; printf "\\0"; done'
    output = subprocess.run(["sh", "-c", script, "sh", *words], capture_output=True, text=True, check=True).stdout
    assert output.split("\0")[:-1] == [shell_quote(word) for word in words]


def test_the_stamp_keeps_the_runner_arguments_and_leaves_out_what_does_not_change_the_model():
    command = ["python", "-u", "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
               "cehrgpt.runners.hf_cehrgpt_pretrain_runner", "--hidden_size", "48", "--dataloader_num_workers", "4",
               "--dataloader_prefetch_factor=4", "--preprocessing_num_workers", "2", "--preprocessing_num_workers=8",
               "--run_name", "my run *", "--x", ""]
    assert stamped_arguments(command) == ["--hidden_size", "48", "--run_name", "my run *", "--x", ""]
    with pytest.raises(PipelineError, match="does not run cehrgpt.runners.hf_cehrgpt_pretrain_runner"):
        stamped_arguments(["python", "-m", "something.else"])


def sequences(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"first file")
    (folder / "sub" / "part-1.parquet").write_bytes(b"second")
    (folder / "notes.txt").write_text("not data")
    (folder / "link.parquet").symlink_to(folder / "part-0.parquet")  # `find -type f` leaves links out
    return folder


def test_data_checksums_are_posix_cksum_of_each_regular_parquet_file(tmp_path):
    folder = sequences(tmp_path / "data")
    cksum = subprocess.run(["cksum", "./part-0.parquet", "./sub/part-1.parquet"], cwd=folder, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    expected = {line.split(" ", 2)[2]: " ".join(line.split(" ", 2)[:2]) for line in cksum}
    assert data_checksums(folder) == expected


def test_a_stamp_reads_back_as_written_and_as_the_shell_wrote_it(tmp_path):
    folder = sequences(tmp_path / "data")
    stamp = stamp_of([*RUNNER, "--num_train_epochs", "10", "--run_name", "it's mine"], folder)
    assert parse_stamp(stamp.text()) == stamp
    lines = stamp.text().splitlines()
    assert lines[:5] == [STAMP_FORMAT, "arg --num_train_epochs", "arg 10", "arg --run_name", "arg 'it'\\''s mine'"]
    # The shell's stamps sorted the data lines by its locale: any order is the same run.
    shuffled = "\n".join(lines[:5] + lines[5:][::-1]) + "\n"
    assert stamp_changes(parse_stamp(shuffled), stamp) == ""


def test_the_same_command_on_the_same_data_is_the_same_run(tmp_path):
    folder = sequences(tmp_path / "data")
    command = [*RUNNER, "--num_train_epochs", "10", "--dataloader_num_workers", "0"]
    again = [*RUNNER, "--num_train_epochs", "10", "--dataloader_num_workers", "4"]  # another machine's loader
    assert stamp_changes(stamp_of(command, folder), stamp_of(again, folder)) == ""


def test_a_changed_argument_is_named_with_its_old_and_new_value(tmp_path):
    folder = sequences(tmp_path / "data")
    old = stamp_of([*RUNNER, "--num_train_epochs", "10", "--max_steps", "8"], folder)
    new = stamp_of([*RUNNER, "--num_train_epochs", "10", "--max_steps", "8", "--num_train_epochs", "12"], folder)
    assert stamp_changes(old, new) == "--num_train_epochs 10 -> 12"


def test_new_gone_and_flag_options_are_named():
    old = RunStamp(STAMP_FORMAT, ["--a", "1", "--flag", "--b=x"])
    new = RunStamp(STAMP_FORMAT, ["--a", "1", "--c", "'my run'", "--flag"])
    assert stamp_changes(old, new) == "--c 'my run' (new); --b x (gone)"
    assert option_values(["--flag", "--a=1", "--b", "2", "--last"]) == {"--flag": "(set)", "--a": "1", "--b": "2",
                                                                       "--last": "(set)"}


def test_changed_data_is_counted():
    old = RunStamp(STAMP_FORMAT, ["--a", "1"], {"./kept": "1 10", "./changed": "2 20", "./gone": "3 30"})
    new = RunStamp(STAMP_FORMAT, ["--a", "1"], {"./kept": "1 10", "./changed": "9 20", "./new": "4 40"})
    assert stamp_changes(old, new) == "the data: 1 files changed, 1 new, 1 gone"


def test_a_stamp_of_another_format_or_reordered_arguments_is_not_the_same_run():
    new = RunStamp(STAMP_FORMAT, ["--a", "1", "--b", "2"])
    assert stamp_changes(dataclasses.replace(new, format="# format 1"), new) == (
        "recorded by an older train_cehrgpt.sh, in a form this one cannot compare")
    assert stamp_changes(parse_stamp(""), new).startswith("recorded by an older")
    assert stamp_changes(RunStamp(STAMP_FORMAT, ["--b", "2", "--a", "1"]), new) == "changed"


# ---------------------------------------------------------------------------------------------
# Resume, refuse, or start over (never delete)
# ---------------------------------------------------------------------------------------------


def checkpoint(model_dir: Path, step: int, complete: bool = True) -> Path:
    folder = model_dir / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_a_new_run_is_stamped_and_marked_unfinished(tmp_path):
    data, model_dir = sequences(tmp_path / "data"), tmp_path / "model"
    model_dir.mkdir()
    said = []
    start_run(model_dir, data, [*RUNNER, "--max_steps", "8"], fresh=False, say=said.append)
    assert said == []
    assert sorted(path.name for path in model_dir.iterdir()) == [TRAINING_INCOMPLETE, STAMP_NAME]
    assert parse_stamp((model_dir / STAMP_NAME).read_text()).arguments == ["--max_steps", "8"]


def test_the_same_run_resumes_past_a_half_written_checkpoint(tmp_path):
    data, model_dir = sequences(tmp_path / "data"), tmp_path / "model"
    model_dir.mkdir()
    command = [*RUNNER, "--max_steps", "8"]
    start_run(model_dir, data, command, fresh=False, say=lambda line: None)
    checkpoint(model_dir, 4)
    checkpoint(model_dir, 6, complete=False)
    said = []
    start_run(model_dir, data, command, fresh=False, say=said.append)
    assert said[0].startswith("set aside checkpoint-6: incomplete, no trainer_state.json")
    assert said[1] == f"resuming: same data and arguments as the checkpoint in {model_dir}"
    assert (model_dir / "checkpoint-4").is_dir() and list((model_dir / INCOMPLETE_CHECKPOINTS).iterdir())


def test_a_changed_command_is_refused_naming_the_change_and_the_run_is_kept(tmp_path):
    data, model_dir = sequences(tmp_path / "data"), tmp_path / "model"
    model_dir.mkdir()
    start_run(model_dir, data, [*RUNNER, "--num_train_epochs", "10"], fresh=False, say=lambda line: None)
    checkpoint(model_dir, 4)
    before = file_contents(model_dir)
    with pytest.raises(PipelineError) as refused:
        start_run(model_dir, data, [*RUNNER, "--num_train_epochs", "12"], fresh=False, say=lambda line: None)
    message = str(refused.value)
    assert "--num_train_epochs 10 -> 12" in message and "--fresh" in message and "--model-dir" in message
    assert "\n" not in message
    assert file_contents(model_dir) == before


def test_fresh_moves_the_previous_run_aside_and_starts_an_empty_folder(tmp_path):
    data, model_dir = sequences(tmp_path / "data"), tmp_path / "model"
    model_dir.mkdir()
    start_run(model_dir, data, [*RUNNER, "--num_train_epochs", "10"], fresh=False, say=lambda line: None)
    checkpoint(model_dir, 4)
    before = file_contents(model_dir)
    said = []
    start_run(model_dir, data, [*RUNNER, "--num_train_epochs", "12"], fresh=True, say=said.append)
    moved = sorted(tmp_path.glob("model.old-*"))
    assert len(moved) == 1 and file_contents(moved[0]) == before
    assert said == [f"--fresh: moved the previous run in {model_dir} to {moved[0]} "
                    "(delete it yourself once you no longer need it)"]
    assert sorted(path.name for path in model_dir.iterdir()) == [TRAINING_INCOMPLETE, STAMP_NAME]


def test_the_start_run_command_keeps_every_word_of_the_training_command(tmp_path, capsys):
    data, model_dir = sequences(tmp_path / "data"), tmp_path / "model"
    model_dir.mkdir()
    training_main(["start-run", str(model_dir), str(data), "--", *RUNNER, "--run_name", "a b *", "--", "", "-x"])
    assert parse_stamp((model_dir / STAMP_NAME).read_text()).arguments == [
        "--run_name", "'a b *'", "--", "''", "-x"]
    with pytest.raises(SystemExit) as refused:
        training_main(["start-run", str(model_dir), str(data), "--", *RUNNER, "--run_name", "other"])
    assert refused.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: the run in {model_dir} cannot be resumed")


def test_a_finished_run_needs_a_model_and_loses_its_marker(tmp_path):
    (tmp_path / TRAINING_INCOMPLETE).write_text("unfinished\n")
    with pytest.raises(PipelineError, match="the runner exited 0 but wrote no model"):
        finish_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    finish_run(tmp_path)
    assert not (tmp_path / TRAINING_INCOMPLETE).exists()


# ---------------------------------------------------------------------------------------------
# The scripts' command lines and the shell code that answers them
# ---------------------------------------------------------------------------------------------


def test_options_are_sorted_out_as_the_scripts_case_loops_did():
    line = parse_options(["--profile=seed", "--num_train_epochs", "20", "--run_name", "my run *", "", "--fresh",
                          "--profile", "tiny", "--fresh=1"], {"--profile": " (demo, seed or tiny)"}, flags=["--fresh"])
    assert line.values == {"--profile": "tiny"} and line.flags == {"--fresh"}
    assert line.passed_through == ["--num_train_epochs", "20", "--run_name", "my run *", "", "--fresh=1"]
    assert parse_options(["--x", "1", "-h", "--profile"], {"--profile": ""}).help
    with pytest.raises(PipelineError, match=r"^--profile needs a value \(demo, seed or tiny\)$"):
        parse_options(["--profile"], {"--profile": " (demo, seed or tiny)"})


@pytest.mark.parametrize(("words", "message"), [
    (["--bogus", "1"], "unknown option '--bogus' (see --help)"),
    (["--bogus=1"], "unknown option '--bogus' (see --help)"),
    (["--bogus"], "--bogus needs a value (see --help)"),
    (["stray"], "unexpected argument 'stray' (see --help)"),
    (["--no-censor=1"], "unknown option '--no-censor' (see --help)"),
])
def test_a_script_without_pass_through_refuses_what_it_does_not_know(words, message):
    with pytest.raises(PipelineError) as refused:
        parse_options(words, {"--schema": " (see --help)"}, flags=["--no-censor"], pass_through=False)
    assert str(refused.value) == message


def test_numbers_and_choices_are_checked_with_one_line():
    assert positive_whole_number("--nproc", "2") == 2
    for bad in ("0", "", "-1", "1.5", "two"):
        with pytest.raises(PipelineError, match=f"^--nproc must be a positive whole number, got '{bad}'$"):
            positive_whole_number("--nproc", bad)
    with pytest.raises(PipelineError, match="^--sampler must be constrained or raw, got 'greedy'$"):
        one_of("--sampler", "greedy", ("constrained", "raw"))


def test_shell_answers_survive_spaces_quotes_globs_newlines_and_empty_strings():
    values = {"A": "plain", "B": "it's a 'b' *", "C": "", "D": "two\nlines", "E": "$HOME `x`"}
    assert shell_values(shell_assignments(values), list(values)) == values
    words = ["--x", "a b", "*", "", "it's", "$(echo no)"]
    assert shell_set_words(shell_words(words)) == words


def test_the_help_answer_prints_the_usage_and_ends_the_script():
    result = subprocess.run(["sh", "-c", 'eval "$1"; echo not reached', "sh", shell_help("Usage: x\n  --y  it's\n")],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "Usage: x\n  --y  it's\n")


def test_available_cores_is_what_nproc_says(monkeypatch):
    for settings in ({}, {"OMP_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "8", "OMP_THREAD_LIMIT": "2"},
                     {"OMP_NUM_THREADS": "2,1"}, {"OMP_NUM_THREADS": ""}):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("OMP_")}
        environment.update(settings)
        for name in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        nproc = subprocess.run(["nproc"], env=environment, capture_output=True, text=True, check=True).stdout
        assert visible_cores() == int(nproc), settings


# ---------------------------------------------------------------------------------------------
# train_cehrgpt.sh's plan and launch
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tutorial_env(monkeypatch, tmp_path):
    monkeypatch.setenv("USE_TF", "0")
    monkeypatch.setenv("CEHR_GPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CEHR_GPT_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SYNTHETIC_DATA_OUTPUT_DIR", str(tmp_path / "synthetic"))
    monkeypatch.setenv("OMOP_DIR", str(tmp_path / "omop"))
    return tmp_path


def split_sequences(root: Path) -> Path:
    """Step 2's split: patient_sequence/train and /test, one Parquet file each."""
    for part in ("train", "test"):
        (root / "data" / "patient_sequence" / part).mkdir(parents=True)
        (root / "data" / "patient_sequence" / part / "part-0.parquet").write_bytes(b"x")
    return root / "data" / "patient_sequence"


def test_training_defaults_train_on_step_2s_train_split_with_the_demo_profile(tutorial_env):
    folder = split_sequences(tutorial_env)
    plan = training_plan(["--num_train_epochs", "20"])
    assert plan.data_folder == (folder / "train").resolve() and plan.model_dir == (tutorial_env / "model").resolve()
    assert plan.model_dir.is_dir() and plan.profile == "demo" and plan.nproc == 1
    assert plan.profile_arguments == runner_arguments(PROFILES["demo"])
    assert plan.runner_extra == ["--num_train_epochs", "20"]
    assert (plan.tokenization, plan.tokenization_note) == ("runner", f"0 MB of sequences; prepare_dataset.py from "
                                                                    f"{PREPARE_MIN_MB} MB")
    assert training_plan(["--nproc", "0", "--help"]) is None


@pytest.mark.parametrize(("words", "message"), [
    (["--tokenization", "fast", "--profile", "huge"], "--tokenization must be auto, prepare or runner, got 'fast'"),
    (["--profile", "huge", "--data-folder", "/nonexistent"], "unknown profile 'huge' (demo, seed, tiny or official)"),
    (["--data-folder", "/nonexistent/sequences"], "no patient sequences at '/nonexistent/sequences'"),
    (["--model-dir", ""], "--model-dir is empty"),
    (["--model-dir", "/"], "--model-dir is the root folder /"),
])
def test_a_bad_training_command_line_is_one_error_in_the_order_the_script_said_them(words, message, tutorial_env):
    split_sequences(tutorial_env)
    with pytest.raises(PipelineError) as refused:
        training_plan(words)
    assert str(refused.value).startswith(message)


def test_a_data_folder_without_parquet_and_use_tf_unset_are_refused(tutorial_env, monkeypatch):
    (tutorial_env / "empty").mkdir()
    with pytest.raises(PipelineError, match="has no .parquet files"):
        training_plan(["--data-folder", str(tutorial_env / "empty")])
    split_sequences(tutorial_env)
    monkeypatch.setenv("USE_TF", "1")
    with pytest.raises(PipelineError, match="^USE_TF is not 0"):
        training_plan([])


@pytest.mark.parametrize("fresh", [False, True])
def test_a_model_folder_the_script_did_not_make_is_refused_unless_only_printing(fresh, tutorial_env):
    split_sequences(tutorial_env)
    mine = tutorial_env / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match=r"was not made by this script \(no training_inputs.txt\)"):
        training_plan(["--model-dir", str(mine)] + (["--fresh"] if fresh else []))
    assert training_plan(["--model-dir", str(mine), "--print-args"]).print_args
    (mine / STAMP_NAME).write_text("")
    assert training_plan(["--model-dir", str(mine)]).model_dir == mine.resolve()


def test_auto_tokenization_prepares_from_the_threshold(tmp_path):
    with open(tmp_path / "part-0.parquet", "wb") as handle:
        handle.truncate((PREPARE_MIN_MB - 1) * 2**20)
    assert tokenization_choice("auto", tmp_path)[0] == "runner"
    with open(tmp_path / "part-0.parquet", "wb") as handle:
        handle.truncate(PREPARE_MIN_MB * 2**20)
    assert tokenization_choice("auto", tmp_path) == (
        "prepare", f"{PREPARE_MIN_MB} MB of sequences; prepare_dataset.py from {PREPARE_MIN_MB} MB")
    assert tokenization_choice("runner", tmp_path) == ("runner", "--tokenization runner")


def test_the_plan_answer_sets_the_scripts_variables(tutorial_env):
    folder = split_sequences(tutorial_env)
    answer = plan_answer(["train_cehrgpt.sh", "--profile", "tiny", "--fresh", "--run_name", "my run *", ""])
    values = shell_values(answer, ["PROFILE", "DATA_FOLDER", "FRESH", "PRINT_ARGS", "NPROC", "TOKENIZATION"])
    assert values == {"PROFILE": "tiny", "DATA_FOLDER": str((folder / "train").resolve()), "FRESH": "1",
                      "PRINT_ARGS": "0", "NPROC": "1", "TOKENIZATION": "runner"}
    extra = shell_values(answer, ["RUNNER_EXTRA"])["RUNNER_EXTRA"]
    assert shell_set_words(extra) == ["--run_name", "my run *", ""]
    assert "Usage: train_cehrgpt.sh" in plan_answer(["train_cehrgpt.sh", "--help"])


def test_launch_settings_feed_a_gpu_and_share_the_cpu_cores():
    single = launch_settings(1, 2, cuda=False)
    assert (single.device, single.loader_arguments, single.threads_per_process) == (
        "cpu (2 cores)", ["--dataloader_num_workers", "0"], None)
    assert launch_settings(1, 2, cuda=True).loader_arguments == [
        "--dataloader_num_workers", "4", "--dataloader_prefetch_factor", "4"]
    cpus = launch_settings(2, 4, cuda=False)
    assert cpus.device == "cpu (4 cores), 2 processes" and cpus.threads_per_process == 2
    assert cpus.loader_arguments[-4:] == ["--use_cpu", "true", "--ddp_backend", "gloo"]
    assert launch_settings(3, 2, cuda=False).threads_per_process == 1
    gpus = launch_settings(2, 16, cuda=True)
    assert gpus.loader_arguments[-2:] == ["--ddp_backend", "nccl"] and gpus.threads_per_process is None


# ---------------------------------------------------------------------------------------------
# generate_synthetic.sh and restore_synthetic.sh
# ---------------------------------------------------------------------------------------------


def finished_model(root: Path) -> Path:
    (root / "model").mkdir(exist_ok=True)
    (root / "model" / "config.json").write_text("{}")
    return root / "model"


def test_generation_asks_the_generator_for_one_less_in_batches_of_at_most_the_patients(tutorial_env):
    split_sequences(tutorial_env)
    finished_model(tutorial_env)
    names = ["NUM_PATIENTS", "BATCH_SIZE", "ASKED_OF_GENERATOR", "PROMPT_DATA", "OUTPUT_DIR", "SAMPLER", "TOP_P"]
    values = shell_values(generation_answer(["generate_synthetic.sh", "--num-patients", "20", "--seed", "1"]), names)
    assert values == {"NUM_PATIENTS": "20", "BATCH_SIZE": "20", "ASKED_OF_GENERATOR": "19",
                      "PROMPT_DATA": f"{tutorial_env}/data/patient_sequence/train",
                      "OUTPUT_DIR": str((tutorial_env / "synthetic").resolve()), "SAMPLER": "constrained", "TOP_P": "1.0"}
    assert (tutorial_env / "synthetic").is_dir()
    assert shell_values(generation_answer(["g"]), ["BATCH_SIZE", "ASKED_OF_GENERATOR"]) == {
        "BATCH_SIZE": "50", "ASKED_OF_GENERATOR": "499"}


@pytest.mark.parametrize(("words", "message"), [
    (["--sampler", "greedy", "--num-patients", "0"], "--num-patients must be a positive whole number, got '0'"),
    (["--sampler", "greedy"], "--sampler must be constrained or raw, got 'greedy'"),
    (["--model-dir", "/nonexistent/model"], "no trained model in '/nonexistent/model'"),
    (["--prompt-data", "/nonexistent"], "no real sequences for the prompts at '/nonexistent'"),
])
def test_a_bad_generation_command_line_is_one_error(words, message, tutorial_env):
    finished_model(tutorial_env)
    with pytest.raises(PipelineError) as refused:
        generation_answer(["generate_synthetic.sh", *words])
    assert str(refused.value).startswith(message)
    assert not (tutorial_env / "synthetic").exists()


def test_a_model_whose_training_has_not_finished_is_not_sampled(tutorial_env):
    split_sequences(tutorial_env)
    (finished_model(tutorial_env) / TRAINING_INCOMPLETE).write_text("unfinished\n")
    with pytest.raises(PipelineError, match=r"has not finished \(TRAINING_INCOMPLETE is there\)"):
        generation_answer(["generate_synthetic.sh"])


def sample(root: Path) -> Path:
    (root / "synthetic" / "top_p10000_constrained" / "generated_sequences").mkdir(parents=True)
    return root / "synthetic" / "top_p10000_constrained"


def test_restore_censors_at_the_sources_last_visit_unless_told_otherwise(tutorial_env):
    folder = sample(tutorial_env)
    names = ["SAMPLE_FOLDER", "SCHEMA", "SOURCE_SCHEMA", "DSN", "CPU_CORES", "CENSOR_ARGS"]
    values = shell_values(restore_answer(["restore_synthetic.sh"]), names)
    assert values == {"SAMPLE_FOLDER": str(folder.resolve()), "SCHEMA": "synthetic_cdm", "SOURCE_SCHEMA": "cdm",
                      "DSN": "", "CPU_CORES": str(visible_cores()),
                      "CENSOR_ARGS": shell_words(["--source-visits", f"{tutorial_env}/omop/visit_occurrence"])}
    dated = shell_values(restore_answer(["r", "--censor-date", "2019-01-09", "--dsn", "host=x user='me'"]),
                         ["CENSOR_ARGS", "DSN"])
    assert shell_set_words(dated["CENSOR_ARGS"]) == ["--censor-date", "2019-01-09"]
    assert dated["DSN"] == "host=x user='me'"
    assert shell_values(restore_answer(["r", "--no-censor"]), ["CENSOR_ARGS"]) == {"CENSOR_ARGS": ""}


@pytest.mark.parametrize(("words", "message"), [
    (["--schema", "cdm", "--censor-date", "2019"], "--schema cdm is the real CDM's schema"),
    (["--censor-date", "2019"], "--censor-date must look like YYYY-MM-DD, got '2019'"),
    (["--censor-date", "2019-01-09", "--no-censor"], "--censor-date and --no-censor contradict each other"),
    (["--sample-folder", "/nonexistent"], "no generated sequences in '/nonexistent/generated_sequences'"),
])
def test_a_bad_restore_command_line_is_one_error(words, message, tutorial_env):
    sample(tutorial_env)
    with pytest.raises(PipelineError) as refused:
        restore_answer(["restore_synthetic.sh", *words])
    assert str(refused.value).startswith(message)


def test_only_the_clinical_tables_the_converter_wrote_are_loaded(tmp_path):
    for table in ("visit_occurrence", "person", "concept", "death"):
        (tmp_path / table).mkdir()
    assert restored_tables(tmp_path) == ["person", "visit_occurrence", "death"]
