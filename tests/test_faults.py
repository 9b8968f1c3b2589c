"""Nothing lost under faults: one writer per output, schemas replaced whole, swaps that leave the old
or the new folder and never neither, training that resumes past a half-written checkpoint, and no
step that hands on a model whose training has not finished.

Every lock here is a real lock held by a real process (this one), every schema a real PostgreSQL
schema, every kill a real SIGKILL: of a step's whole process group once an event shows it is where
the test wants it (frozen with SIGSTOP first, so a fast machine cannot finish before the signal), or
at an exact moment through cehrgpt_tutorials/faults.py's crash points. The lock and unfinished-model
tests run on a few crafted sequences: the steps stop before they read them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, SCRIPTS, cdm_fingerprint, output_of, run_script, run_sh
from helpers import (
    error_line,
    file_contents,
    frozen,
    outcome,
    person_csv,
    query,
    start_in_own_group,
    wait_for,
)

from cehrgpt_tutorials.locks import application_name, output_lock, schema_lock
from cehrgpt_tutorials.pipeline.training import (
    INCOMPLETE_CHECKPOINTS,
    TRAINING_INCOMPLETE,
    checkpoint_problem,
    set_aside_incomplete_checkpoints,
)

# ---------------------------------------------------------------------------------------------
# One writer per output: every step stops at once when another run holds what it writes
# ---------------------------------------------------------------------------------------------


def crafted_sequences(folder: Path, persons: int = 6) -> Path:
    """A patient_sequence folder as step 2 and 3 write it (train/ and test/, one Parquet file each), of a
    few short crafted patients: for the steps that stop before they read their input."""
    tokens = ["year:2011", "age:30", "8507", "8527", "[VS]", "9202", "201826", "[VE]"]
    for split, first in (("train", 1), ("test", 1000)):
        (folder / split).mkdir(parents=True)
        table = pa.table({"person_id": pa.array(range(first, first + persons), pa.int64()),
                          "concept_ids": pa.array([tokens] * persons, pa.list_(pa.string())),
                          "dates": pa.array([list(range(len(tokens)))] * persons, pa.list_(pa.int32())),
                          "num_of_concepts": pa.array([len(tokens)] * persons, pa.int64())})
        pq.write_table(table, folder / split / "part-00000.parquet")
    return folder


def crafted_omop(folder: Path) -> Path:
    """Step 2's input tables, one Parquet file of one row each (what a step that stops first is given)."""
    for table in ("person", "visit_occurrence", "concept", "condition_occurrence", "procedure_occurrence",
                  "drug_exposure"):
        (folder / table).mkdir(parents=True)
        pq.write_table(pa.table({"person_id": pa.array([1], pa.int64())}), folder / table / "part-00000.parquet")
    return folder


def parquet_of(sequences: Path, folder: Path) -> Path:
    """A folder with one Parquet file of the training sequences in `sequences`."""
    folder.mkdir(parents=True)
    table = ds.dataset(sequences / "train", format="parquet").head(20)
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


def locked_step(step: str, tmp: Path, fixtures: dict) -> tuple[Path, list[str]]:
    """(the output the step writes, the command that runs it) for a step whose output already holds
    something (so the test can check it is left as it was)."""
    synthetic = tmp / "synthetic"
    run = synthetic / "top_p10000_constrained"
    if step in ("generate", "restore", "inspect"):
        shutil.copytree(fixtures["sequences"] / "train", run / "generated_sequences")
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # finished (no TRAINING_INCOMPLETE): only the lock stops it
    sequences = parquet_of(fixtures["sequences"], tmp / "data" / "patient_sequence")
    if step == "export":
        output = tmp / "omop"
        (output / "person").mkdir(parents=True)
        return output, [sys.executable, "export_omop.py", "--dsn", fixtures["uri"], "--schema", "demo_small",
                        "--output-dir", str(output)]
    if step == "sequences":
        output = tmp / "data"
        return output, ["sh", str(SCRIPTS / "create_cehrgpt_pretraining_data.sh"), "--input_folder",
                        str(fixtures["omop"]), "--output_folder", str(output), "--start_date", "1985-01-01"]
    if step == "cleanup":
        return sequences, [sys.executable, "cleanup_tokens.py", "--patient-sequence-dir", str(sequences)]
    if step == "train":
        (tmp / "new_model").mkdir()
        return tmp / "new_model", ["sh", str(SCRIPTS / "train_cehrgpt.sh"), "--profile", "tiny", "--data-folder",
                                   str(sequences), "--model-dir", str(tmp / "new_model")]
    if step == "generate":
        return synthetic, ["sh", str(SCRIPTS / "generate_synthetic.sh"), "--model-dir", str(model), "--prompt-data",
                           str(sequences), "--output-dir", str(synthetic)]
    if step == "restore":
        return synthetic, ["sh", str(SCRIPTS / "restore_synthetic.sh"), "--sample-folder", str(run),
                           "--source-omop-folder", str(fixtures["omop"]), "--dsn", fixtures["uri"]]
    if step == "inspect":
        return synthetic, [sys.executable, "inspect_synthetic.py", "--synthetic-dir", str(synthetic),
                           "--real-dir", str(fixtures["sequences"])]
    if step == "predict":
        output = tmp / "prediction"
        output.mkdir()
        (output / "predict_report.json").write_text("{}")
        return output, [sys.executable, "predict.py", "--output-dir", str(output), "--model-dir", str(model),
                        "--patient-sequence-dir", str(fixtures["sequences"]), "--dsn", fixtures["uri"]]
    if step == "demo":
        output = tmp / "omop_synthea" / ".demo"
        output.mkdir(parents=True)
        (output / "export.done").write_text("done\n")
        return output, [sys.executable, "-m", "cehrgpt_tutorials.pipeline.steps", "run", "all"]
    raise AssertionError(step)


STEPS = ["export", "sequences", "cleanup", "train", "generate", "restore", "inspect", "predict", "demo"]


@pytest.mark.parametrize("step", STEPS)
def test_a_second_run_stops_without_waiting_naming_the_run_that_holds_its_output(step, pg_server, pipeline_env,
                                                                                 tmp_path):
    fixtures = {"omop": crafted_omop(tmp_path / "input_omop"), "uri": pg_server,
                "sequences": crafted_sequences(tmp_path / "input_sequences")}
    output, command = locked_step(step, tmp_path, fixtures)
    environment = dict(pipeline_env, OMOP_DIR=str(tmp_path / "omop_synthea"))
    before = file_contents(output)
    with output_lock(output, "held by the test"):
        # The lock is held until this returns: a run that waited for it would never return (the
        # timeout is the guard), one that went on regardless would change the output or not fail.
        result = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    line = error_line(result)
    assert f"is being written by process {os.getpid()} (" in line, line
    assert str(output.resolve()) in line
    assert "spark-submit" not in result.stdout and "$ " not in result.stdout, "the step started its work"
    assert file_contents(output) == before, "the locked output was changed"


def test_a_load_into_a_schema_another_load_holds_stops_at_once(demo_csv_dir, pg_server, pipeline_env, tmp_path):
    folder = person_csv(tmp_path / "persons", demo_csv_dir, rows=5)
    holder = psycopg2.connect(pg_server, application_name=application_name("the test"))
    try:
        schema_lock(holder, "t_locked")
        result = run_script(["load_omop.py", "--dsn", pg_server, "--input-dir", str(folder), "--schema", "t_locked"],
                     env=pipeline_env, timeout=120)
    finally:
        holder.close()
    line = error_line(result)
    assert "schema t_locked is being written by cehrgpt-tutorial the test" in line, line
    assert query(pg_server, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s", ("t_locked%",)) == [(0,)]


def test_a_lock_is_free_again_once_its_holder_is_killed(tmp_path):
    """flock: the kernel releases it whatever way the holder ends, so no stale lock blocks a re-run."""
    output = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cehrgpt_tutorials.locks import output_lock\n"
         f"with output_lock({str(output)!r}, 'x'):\n    print('held', flush=True); time.sleep(600)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"being written by process {holder.pid}"):
        with output_lock(output, "the output"):
            pass
    holder.kill()
    holder.wait()
    with output_lock(output, "the output"):
        pass


# ---------------------------------------------------------------------------------------------
# Schemas replaced whole
# ---------------------------------------------------------------------------------------------


def clinical_csvs(folder: Path, demo_csv_dir: Path, persons: int, bad_condition: bool = False) -> Path:
    """PERSON, VISIT_OCCURRENCE and CONDITION_OCCURRENCE of the demo's first `persons` persons; with
    bad_condition, one condition row holds a date PostgreSQL cannot read."""
    folder.mkdir(parents=True)
    keep = {line.split(",")[0] for line in (demo_csv_dir / "PERSON.csv").read_text().splitlines()[1: persons + 1]}
    for name in ("PERSON", "VISIT_OCCURRENCE", "CONDITION_OCCURRENCE"):
        header, *rows = (demo_csv_dir / f"{name}.csv").read_text().splitlines()
        person = header.split(",").index("person_id")
        rows = [row for row in rows if row.split(",")[person] in keep]
        if bad_condition and name == "CONDITION_OCCURRENCE":
            fields = header.split(",")
            row = rows[len(rows) // 2].split(",")
            row[fields.index("condition_start_date")] = "2019-13-45"
            rows[len(rows) // 2] = ",".join(row)
        (folder / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def staging_schemas(uri: str, schema: str) -> list[str]:
    return [row[0] for row in query(uri, "SELECT nspname FROM pg_namespace WHERE nspname = %s", (f"{schema}__loading",))]


def test_a_replace_that_fails_half_way_leaves_the_schema_as_it_was(demo_csv_dir, pg_server, pipeline_env, tmp_path):
    # The case: a schema of many persons, then a smaller folder whose condition table holds a
    # bad value. Before, person and visit_occurrence were replaced and condition_occurrence was not.
    first = clinical_csvs(tmp_path / "first", demo_csv_dir, persons=200)
    assert run_script(["load_omop.py", "--dsn", pg_server, "--input-dir", str(first), "--schema", "t_whole"],
                      env=pipeline_env).returncode == 0
    before = cdm_fingerprint(pg_server, "t_whole")
    broken = clinical_csvs(tmp_path / "broken", demo_csv_dir, persons=20, bad_condition=True)
    result = run_script(["load_omop.py", "--dsn", pg_server, "--input-dir", str(broken), "--schema", "t_whole",
                         "--replace"], env=pipeline_env)
    line = error_line(result)
    assert "t_whole.condition_occurrence" in line and "schema t_whole left unchanged" in line, line
    assert cdm_fingerprint(pg_server, "t_whole") == before
    assert staging_schemas(pg_server, "t_whole") == []  # a failure cleans up after itself


def test_a_replace_keeps_the_tables_it_does_not_load(demo_csv_dir, pg_server, pipeline_env, tmp_path):
    first = clinical_csvs(tmp_path / "first", demo_csv_dir, persons=30)
    assert run_script(["load_omop.py", "--dsn", pg_server, "--input-dir", str(first), "--schema", "t_keep"],
                      env=pipeline_env).returncode == 0
    conditions = cdm_fingerprint(pg_server, "t_keep")["condition_occurrence"]
    persons = person_csv(tmp_path / "persons", demo_csv_dir, rows=7)
    result = run_script(["load_omop.py", "--dsn", pg_server, "--input-dir", str(persons), "--schema", "t_keep",
                         "--replace"], env=pipeline_env)
    assert result.returncode == 0, output_of(result)
    after = cdm_fingerprint(pg_server, "t_keep")
    assert after["person"][0] == 7 and after["condition_occurrence"] == conditions


@pytest.mark.parametrize("kill_point", ["mid-copy", "before-swap"])
def test_a_load_killed_at_any_point_leaves_the_schema_whole_and_the_next_load_cleans_up(
        kill_point, demo_csv_dir, pg_server, pipeline_env, tmp_path):
    schema = f"t_killed_{kill_point.replace('-', '_')}"
    first = clinical_csvs(tmp_path / "first", demo_csv_dir, persons=100)
    second = clinical_csvs(tmp_path / "second", demo_csv_dir, persons=300)
    load = ["load_omop.py", "--dsn", pg_server, "--schema", schema, "--replace", "--input-dir"]
    assert run_script(load + [str(second)], env=pipeline_env).returncode == 0
    reference = cdm_fingerprint(pg_server, schema)  # what an uninterrupted load of `second` gives
    assert run_script(load + [str(first)], env=pipeline_env).returncode == 0
    before = cdm_fingerprint(pg_server, schema)

    # mid-copy: the staging schema has its first table, the target none of the new rows. A load of 300
    # persons takes about a second, so both moments are crash points inside the process: polling from
    # outside once saw the first staging table, then the swap had run before the process could be stopped.
    environment = dict(pipeline_env, CEHRGPT_CRASH_AT=f"load:{kill_point}")
    process = start_in_own_group([sys.executable, *load, str(second)], environment)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    if kill_point == "mid-copy":
        assert query(pg_server, "SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                     (f"{schema}__loading",))[0][0] >= 1
    assert staging_schemas(pg_server, schema) == [f"{schema}__loading"]
    assert cdm_fingerprint(pg_server, schema) == before  # the old schema, whole and queryable

    again = run_script(load + [str(second)], env=pipeline_env)
    assert again.returncode == 0, output_of(again)
    assert f"dropped schema {schema}__loading, which an interrupted load left" in again.stdout
    assert staging_schemas(pg_server, schema) == []
    assert cdm_fingerprint(pg_server, schema) == reference


def test_a_load_cut_off_from_the_database_is_one_line_keeps_the_schema_and_the_next_load_cleans_up(
        demo_csv_dir, pg_server, pipeline_env, tmp_path):
    """The database side of a restore (restore_synthetic.sh loads with load_omop.py --replace)."""
    schema = "t_cut_off"
    load = ["load_omop.py", "--dsn", pg_server, "--schema", schema, "--replace", "--input-dir"]
    first = clinical_csvs(tmp_path / "first", demo_csv_dir, persons=100)
    second = clinical_csvs(tmp_path / "second", demo_csv_dir, persons=300)
    assert run_script(load + [str(first)], env=pipeline_env).returncode == 0
    before = cdm_fingerprint(pg_server, schema)
    process = start_in_own_group([sys.executable, *load, str(second)], pipeline_env, stderr=subprocess.PIPE)
    wait_for(lambda: staging_schemas(pg_server, schema), process, "the staging schema")
    with frozen(process):  # while its staging schema is being filled
        assert staging_schemas(pg_server, schema)
        query(pg_server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
              ("cehrgpt-tutorial load_omop.py%",))
    assert f"schema {schema} left unchanged" in error_line(outcome(process))
    assert cdm_fingerprint(pg_server, schema) == before
    again = run_script(load + [str(second)], env=pipeline_env)
    assert again.returncode == 0, output_of(again)
    assert staging_schemas(pg_server, schema) == []


# ---------------------------------------------------------------------------------------------
# Folder swaps: the old folder or the new one, never neither
# ---------------------------------------------------------------------------------------------


def replace_in_subprocess(new: Path, target: Path, crash_at: str, two_renames: bool):
    environment = dict(os.environ, CEHRGPT_CRASH_AT=crash_at)
    if two_renames:
        environment["CEHRGPT_NO_RENAME_EXCHANGE"] = "1"
    return subprocess.run([sys.executable, "-m", "cehrgpt_tutorials.files", "replace", str(new), str(target)],
                          env=environment, cwd=REPO_ROOT, capture_output=True, text=True, start_new_session=True)


@pytest.mark.parametrize("two_renames", [False, True], ids=["rename-exchange", "two-renames"])
@pytest.mark.parametrize("crash_at", ["replace:before-swap", "replace:between-renames", "replace:after-swap"])
def test_a_swap_killed_at_any_moment_leaves_a_whole_folder_and_the_next_write_tidies_up(crash_at, two_renames,
                                                                                         tmp_path):
    from cehrgpt_tutorials.files import atomic_directory

    target, new = tmp_path / "table", tmp_path / ".table.tmp-0123abcd"
    target.mkdir()
    (target / "part-0.parquet").write_text("old")
    new.mkdir()
    (new / "part-0.parquet").write_text("new")
    result = replace_in_subprocess(new, target, crash_at, two_renames)
    killed = result.returncode == -signal.SIGKILL
    assert killed == (two_renames or crash_at != "replace:between-renames"), result.stderr
    visible = [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")]
    if target.exists():
        assert (target / "part-0.parquet").read_text() in ("old", "new")  # whole, never a mixture
    else:  # only between the two renames of a file system without RENAME_EXCHANGE
        assert crash_at == "replace:between-renames" and two_renames and visible == []
    # The next write of the folder puts back what it must and removes what the killed run left.
    with atomic_directory(target) as staging:
        (staging / "part-0.parquet").write_text("newer")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".table.lock", "table"]
    assert (target / "part-0.parquet").read_text() == "newer"


def test_a_swap_killed_between_its_two_renames_puts_the_old_folder_back(tmp_path):
    from cehrgpt_tutorials.files import restore_interrupted_swap

    target, new = tmp_path / "table", tmp_path / ".table.tmp-0123abcd"
    target.mkdir()
    (target / "part-0.parquet").write_text("old")
    new.mkdir()
    result = replace_in_subprocess(new, target, "replace:between-renames", two_renames=True)
    assert result.returncode == -signal.SIGKILL and not target.exists()
    restore_interrupted_swap(target)
    assert (target / "part-0.parquet").read_text() == "old"


# ---------------------------------------------------------------------------------------------
# Training: resume from the last complete checkpoint; refuse an unfinished model
# ---------------------------------------------------------------------------------------------


def checkpoint(folder: Path, step: int, *, state: str | None = '{"global_step": 1}', config: bool = True,
               weights: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if config:
        (path / "config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_only_checkpoints_the_trainer_cannot_resume_from_are_set_aside(tmp_path):
    complete = checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 3, state=None)  # killed before the Trainer wrote its state (it writes it last)
    checkpoint(tmp_path, 4, state='{"global_st')  # killed while writing it
    checkpoint(tmp_path, 5, weights=False)  # half-deleted by the rotation of old checkpoints
    assert checkpoint_problem(complete) is None
    moved = set_aside_incomplete_checkpoints(tmp_path)
    assert [(old.name, why.split(" (")[0]) for old, _, why in moved] == [
        ("checkpoint-3", "no trainer_state.json"), ("checkpoint-4", "trainer_state.json is unreadable"),
        ("checkpoint-5", "no model weights")]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", INCOMPLETE_CHECKPOINTS]
    kept = sorted(path.name.split(".")[0] for path in (tmp_path / INCOMPLETE_CHECKPOINTS).iterdir())
    assert kept == ["checkpoint-3", "checkpoint-4", "checkpoint-5"]  # moved, never deleted
    assert (tmp_path / INCOMPLETE_CHECKPOINTS / moved[0][1].name / "config.json").is_file()


@pytest.mark.slow
def test_a_half_written_checkpoint_is_set_aside_and_training_resumes_from_the_last_complete_one(
        tiny_model, pipeline_env, tmp_path):
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    # A copy of the session's tiny run, as if the same run had been interrupted while writing its next
    # checkpoint (the stamp names the folder, so the copy's names its own).
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model["model_dir"], model_dir)
    stamp = model_dir / "training_inputs.txt"
    stamp.write_text(stamp.read_text().replace(str(Path(tiny_model["model_dir"]).resolve()), str(model_dir.resolve())))
    steps = sorted(int(path.name.split("-")[1]) for path in model_dir.glob("checkpoint-*"))
    assert steps, "the tiny run kept no checkpoint"
    half_written = checkpoint(model_dir, steps[-1] + 1, state=None)
    arguments = [str(argument) for argument in tiny_model["arguments"]]
    arguments[arguments.index("--model-dir") + 1] = str(model_dir)

    result = run_sh("train_cehrgpt.sh", arguments, dict(pipeline_env, TRANSFORMERS_VERBOSITY="info"))
    assert result.returncode == 0, output_of(result)
    assert f"set aside {half_written.name}: incomplete, no trainer_state.json" in result.stdout
    assert "resuming: same data and arguments" in result.stdout
    assert f"Continuing training from global step {steps[-1]}" in result.stdout + result.stderr
    assert not half_written.exists() and list((model_dir / INCOMPLETE_CHECKPOINTS).glob(f"{half_written.name}.*"))
    assert not (model_dir / TRAINING_INCOMPLETE).exists()


def test_steps_that_read_a_model_refuse_one_whose_training_has_not_finished(pipeline_env, tmp_path):
    sequences = crafted_sequences(tmp_path / "patient_sequence")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # what the runner may have written before it was stopped
    (model / TRAINING_INCOMPLETE).write_text("train_cehrgpt.sh started and has not finished\n")
    generate = run_sh("generate_synthetic.sh", ["--model-dir", model, "--prompt-data", sequences,
                                                "--output-dir", tmp_path / "synthetic"], pipeline_env)
    predict = run_script(["predict.py", "--model-dir", str(model), "--output-dir", str(tmp_path / "prediction"),
                          "--patient-sequence-dir", str(sequences), "--dsn", "postgresql:///none"],
                         env=pipeline_env)
    for result in (generate, predict):
        line = error_line(result)
        assert f"the training in {model} has not finished ({TRAINING_INCOMPLETE} is there)" in line, line
    assert not (tmp_path / "synthetic").exists() or not any((tmp_path / "synthetic").iterdir())
    assert not (tmp_path / "prediction").exists() or not any((tmp_path / "prediction").iterdir())


@pytest.mark.slow  # starts the cehrgpt runner
def test_a_training_whose_runner_fails_leaves_its_model_marked_unfinished(pipeline_env, tmp_path):
    """The marker is written before the runner starts, so a runner that dies leaves it there (its removal
    once the runner is done: test_training_settings.py and the slow resume test above)."""
    sequences = parquet_of(crafted_sequences(tmp_path / "patient_sequence"), tmp_path / "data")
    result = run_sh("train_cehrgpt.sh", ["--profile", "tiny", "--data-folder", sequences, "--model-dir",
                                         tmp_path / "model", "--max_steps", "not-a-number"], pipeline_env)
    assert result.returncode != 0
    assert "not-a-number" in result.stderr, output_of(result)  # the runner's own refusal, not the script's
    assert (tmp_path / "model" / TRAINING_INCOMPLETE).is_file()

