"""The fault matrix: every step killed with SIGKILL (its whole process group, as a power cut or the OOM
killer would) early, mid-write and during its final swap, then run again; a full disk under the
export, cleanup, generation, restore and prediction; the database going away mid-export. For every
cell that runs:

  (a) no half-written output is visible where the next step or a user reads it,
  (b) the re-run succeeds without any cleanup by hand,
  (c) deterministic outputs equal an uninterrupted run's;

and for the faults a step can report: one line starting with "error:", a non-zero exit, nothing lost.

Kill points are events (a staging folder or file appearing, a staging schema appearing), the step
frozen with SIGSTOP before the kill so a fast machine cannot slip past them, or crash points
(cehrgpt_tutorials/faults.py) for moments too short to catch from outside (a swap, one file written,
one batch generated). What each guard is: README, "Troubleshooting". The load step's cells (killed
mid-copy and before its swap, the database going away mid-load, which is the database side of a
restore) are in test_faults.py with the schema tests, training's in test_faults.py and
test_script_safety.py; this file holds the others.

The five full-disk cells need a tmpfs they can mount (root, or a container allowed to mount): elsewhere
they skip, saying so, and only the other cells run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, SCRIPTS, cdm_fingerprint, output_of, run_script, run_sh
from helpers import (
    error_line,
    file_contents,
    frozen,
    kill_when,
    outcome,
    query,
    start_in_own_group,
    visible_names,
    wait_for,
)

from cehrgpt_tutorials.locks import output_lock
from cehrgpt_tutorials.prediction.cohort import DEFAULT_COHORT_SQL

pytestmark = pytest.mark.slow


def rows_of(folder: Path, sort_by: list[str] | None = None) -> list[dict]:
    """Every row of a Parquet folder (hidden and '_' files skipped), in a fixed order."""
    table = ds.dataset(folder, format="parquet").to_table()
    columns = sort_by or [name for name in table.column_names
                          if not pa.types.is_nested(table.schema.field(name).type)]
    return table.sort_by([(name, "ascending") for name in columns]).to_pylist()


def completed(command: list, environment: dict) -> subprocess.CompletedProcess:
    """Run a whole command line (its words, paths allowed) to its end."""
    return subprocess.run([str(word) for word in command], env=environment, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)


def killed_group(command: list, environment: dict, event, what: str, cwd: Path = REPO_ROOT) -> None:
    process = start_in_own_group(command, environment, cwd)
    kill_when(process, event, what=what)
    assert process.returncode == -signal.SIGKILL


def crashed_at(command: list, environment: dict, crash_at: str, two_renames: bool = False) -> str:
    """Run until the crash point kills the process group; returns its output."""
    environment = dict(environment, CEHRGPT_CRASH_AT=crash_at)
    if two_renames:
        environment["CEHRGPT_NO_RENAME_EXCHANGE"] = "1"
    process = start_in_own_group(command, environment)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == -signal.SIGKILL, f"never reached {crash_at}:\n{output[-3000:]}"
    return output


# ---------------------------------------------------------------------------------------------
# A full disk: a small tmpfs, filled to its last few kilobytes after the previous outputs are there
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs at tmp_path/disk (root may mount one; others skip, saying why); fill(outputs) takes
    the locks of the outputs once (so their lock files exist, as after any earlier run), then fills the
    disk to the last byte."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a disk ({mounted.stderr.strip() or 'mount failed'})")

    def fill(*outputs: Path, free: int = 0) -> None:
        for output in outputs:
            with output_lock(output, "the output"):
                pass
        available = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
        with open(mount_point / ".filler", "wb") as filler:
            filler.truncate(0)
            chunk = b"\0" * (1 << 20)
            left = max(0, available - free)
            while left > 0:
                left -= filler.write(chunk[: min(len(chunk), left)])

    yield mount_point, fill
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def assert_full_disk_error(result) -> None:
    error_line(result, returncode=None)
    assert "No space left on device" in result.stdout + result.stderr, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Step 1: export (killed early, at its swap; a full disk; the database going away)
# ---------------------------------------------------------------------------------------------


def export_command(uri: str, output: Path) -> list:
    return [sys.executable, "export_omop.py", "--dsn", uri, "--schema", "demo_small", "--output-dir", output]


@pytest.mark.parametrize("crash_at, two_renames", [("replace:after-swap", False), ("replace:between-renames", True)])
def test_export_killed_during_a_swap_leaves_whole_tables_and_the_rerun_equals_an_uninterrupted_export(
        crash_at, two_renames, demo_omop_parquet, pg_server, pipeline_env, tmp_path):
    output = tmp_path / "omop"
    shutil.copytree(demo_omop_parquet, output)  # the previous export (the same data: a reference too)
    crashed_at(export_command(pg_server, output), pipeline_env, crash_at, two_renames)
    tables = visible_names(demo_omop_parquet)
    for table in visible_names(output):  # (a) whatever is visible is a whole table
        assert rows_of(output / table) == rows_of(demo_omop_parquet / table), table
    # Only between the two renames of a file system without RENAME_EXCHANGE is a table absent (put back below).
    assert len(set(tables) - set(visible_names(output))) == (1 if two_renames else 0)
    again = completed(export_command(pg_server, output), pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert visible_names(output) == tables and not [p for p in output.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    for table in tables:  # (c)
        assert rows_of(output / table) == rows_of(demo_omop_parquet / table), table


def test_export_on_a_full_disk_is_one_line_and_keeps_the_previous_export(small_disk, demo_omop_parquet, pg_server,
                                                                         pipeline_env):
    disk, fill = small_disk
    output = disk / "omop"
    shutil.copytree(demo_omop_parquet, output)
    before = file_contents(output)
    fill(output)
    result = completed(export_command(pg_server, output), pipeline_env)
    assert_full_disk_error(result)
    assert file_contents(output) == before


# ---------------------------------------------------------------------------------------------
# Step 2: patient sequences (killed while Spark writes them)
# ---------------------------------------------------------------------------------------------


def test_sequences_killed_while_spark_writes_keep_the_previous_ones_and_the_rerun_equals_an_uninterrupted_run(
        demo_omop_parquet, demo_patient_sequence, pipeline_env, tmp_path):
    output = tmp_path / "sequences"
    shutil.copytree(demo_patient_sequence.parent, output, symlinks=True)  # the previous run's outputs
    before = {name: file_contents(output / name) for name in ("patient_sequence", "qualified_concept_list")}
    command = ["sh", SCRIPTS / "create_cehrgpt_pretraining_data.sh", "--input_folder", demo_omop_parquet,
               "--output_folder", output, "--start_date", "1985-01-01", "--min_num_of_patients", "5"]
    killed_group(command, pipeline_env, lambda: any(output.glob(".patient_sequence.tmp-*/patient_sequence/**/*.parquet")),
                 "app 2 writing the sequences")
    for name, digest in before.items():  # (a)
        assert file_contents(output / name) == digest, name
    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert not list(output.glob(".patient_sequence.tmp-*"))
    cleanup = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(output / "patient_sequence")],
                         pipeline_env)
    assert cleanup.returncode == 0, output_of(cleanup)
    for split in ("train", "test"):  # (c) the fixture's sequences came from an uninterrupted run
        assert rows_of(output / "patient_sequence" / split, ["person_id"]) == \
            rows_of(demo_patient_sequence / split, ["person_id"]), split


# ---------------------------------------------------------------------------------------------
# Step 3: cleanup (killed mid-file; a full disk)
# ---------------------------------------------------------------------------------------------


def dirty_sequences(folder: Path, files: int = 12, rows: int = 4000) -> Path:
    """Patient sequences with a malformed time token in every row, so cleanup rewrites every file."""
    folder.mkdir(parents=True)
    tokens = ["year:2011", "age:30", "8507", "8527", "[VS]", "9201", "201826", "i-D-3", "4329847", "[VE]"]
    table = pa.table({"concept_ids": pa.array([tokens] * rows, pa.list_(pa.string())),
                      "dates": pa.array([list(range(len(tokens)))] * rows, pa.list_(pa.int32())),
                      "person_id": pa.array(range(rows), pa.int64())})
    for number in range(files):
        pq.write_table(table, folder / f"part-{number:05d}.parquet")
    return folder


def test_cleanup_killed_mid_file_leaves_every_file_whole_and_the_rerun_equals_an_uninterrupted_cleanup(
        pipeline_env, tmp_path):
    reference = dirty_sequences(tmp_path / "reference")
    assert run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(reference), "--jobs", "1"],
                      pipeline_env).returncode == 0
    folder = dirty_sequences(tmp_path / "patient_sequence")
    original = {path.name: path.read_bytes() for path in folder.iterdir()}
    command = [sys.executable, "cleanup_tokens.py", "--patient-sequence-dir", folder, "--jobs", "1"]
    # Killed when the first cleaned file is written in full under its temporary name, not yet renamed.
    crashed_at(command, pipeline_env, "atomic-file:before-rename")
    assert list(folder.glob(".part-*.tmp.parquet")), "no temporary file: not killed mid-write"
    for path in folder.glob("part-*.parquet"):  # (a) each visible file is the original one
        assert path.read_bytes() == original[path.name]
    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert visible_names(folder) == visible_names(reference) and not [p for p in folder.iterdir() if p.name.endswith(".tmp.parquet")]
    for name in visible_names(folder):  # (c)
        assert pq.read_table(folder / name) == pq.read_table(reference / name), name


def test_cleanup_on_a_full_disk_is_one_line_and_keeps_each_file_whole(small_disk, pipeline_env, tmp_path):
    disk, fill = small_disk
    folder = dirty_sequences(disk / "patient_sequence", files=4, rows=2000)
    before = file_contents(folder)
    fill(folder)
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder), "--jobs", "1"], pipeline_env)
    assert_full_disk_error(result)
    assert file_contents(folder) == before


# ---------------------------------------------------------------------------------------------
# Step 5a: generation (killed mid-run and at its swap; a full disk)
# ---------------------------------------------------------------------------------------------


def generate_command(model_dir: Path, prompts: Path, output: Path) -> list:
    return ["sh", SCRIPTS / "generate_synthetic.sh", "--model-dir", model_dir, "--prompt-data", prompts,
            "--output-dir", output, "--num-patients", "12", "--batch-size", "4", "--context-window", "64",
            "--seed", "11"]


@pytest.fixture(scope="module")
def generated_reference(tiny_model, demo_patient_sequence, pipeline_env, tmp_path_factory) -> Path:
    """An uninterrupted, seeded generation (the run folder)."""
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    output = tmp_path_factory.mktemp("generated_reference")
    result = run_sh("generate_synthetic.sh", generate_command(tiny_model["model_dir"], demo_patient_sequence, output)[2:],
                    pipeline_env)
    assert result.returncode == 0, output_of(result)
    return output / "top_p10000_constrained"


def test_generation_killed_mid_run_or_at_its_swap_keeps_a_whole_sample_and_the_rerun_equals_an_uninterrupted_one(
        generated_reference, tiny_model, demo_patient_sequence, pipeline_env, tmp_path):
    output = tmp_path / "synthetic"
    shutil.copytree(generated_reference.parent, output)
    run_folder = output / generated_reference.name
    (run_folder / "report").mkdir()  # something made from the previous sample
    before = file_contents(run_folder)
    command = generate_command(tiny_model["model_dir"], demo_patient_sequence, output)
    crashed_at(command, pipeline_env, "generate:batch-written")  # the first batch written, the rest to come
    assert list(output.glob(".generate.tmp-*/*/generated_sequences/*.parquet"))
    assert file_contents(run_folder) == before  # (a) killed mid-run: the previous sample as it was
    crashed_at(command, pipeline_env, "replace:after-swap")
    assert visible_names(output) == [run_folder.name]  # (a) killed at the swap: the new sample, whole
    expected = rows_of(generated_reference / "generated_sequences", ["person_id"])
    assert rows_of(run_folder / "generated_sequences", ["person_id"]) == expected
    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert [path.name for path in output.iterdir() if not path.name.endswith(".lock")] == [run_folder.name]
    assert rows_of(run_folder / "generated_sequences", ["person_id"]) == expected  # (c) same seed, same patients


def test_generation_on_a_full_disk_is_one_line_and_keeps_the_previous_sample(
        small_disk, generated_reference, tiny_model, demo_patient_sequence, pipeline_env):
    disk, fill = small_disk
    output = disk / "synthetic"
    shutil.copytree(generated_reference.parent, output)
    before = file_contents(output / generated_reference.name)
    fill(output)
    command = generate_command(tiny_model["model_dir"], demo_patient_sequence, output)
    result = completed(command, pipeline_env)
    assert_full_disk_error(result)
    assert file_contents(output / generated_reference.name) == before


# ---------------------------------------------------------------------------------------------
# Step 5b: restore (killed mid-conversion; the database going away mid-load; a full disk)
# ---------------------------------------------------------------------------------------------

RESTORE_SCHEMA = "synthetic_faults"


def restore_command(sample: Path, source: Path, uri: str) -> list:
    return ["sh", SCRIPTS / "restore_synthetic.sh", "--sample-folder", sample, "--source-omop-folder", source,
            "--dsn", uri, "--schema", RESTORE_SCHEMA, "--cpu-cores", "1"]


@pytest.fixture(scope="module")
def restored_reference(generated_reference, demo_omop_parquet, demo_cdm, pipeline_env, tmp_path_factory) -> dict:
    """An uninterrupted restore of the seeded sample: its folder and the schema it loaded."""
    sample = tmp_path_factory.mktemp("restored_reference") / "sample"
    shutil.copytree(generated_reference / "generated_sequences", sample / "generated_sequences")
    result = run_sh("restore_synthetic.sh", restore_command(sample, demo_omop_parquet, demo_cdm["uri"])[2:],
                    pipeline_env)
    assert result.returncode == 0, output_of(result)
    return {"sample": sample, "schema": cdm_fingerprint(demo_cdm["uri"], RESTORE_SCHEMA), "uri": demo_cdm["uri"]}


def restored_tables(sample: Path) -> dict[str, list[dict]]:
    folder = sample / "restored_omop"
    return {table: rows_of(folder / table) for table in ("person", "visit_occurrence", "condition_occurrence",
                                                         "observation_period")}


def test_restore_killed_mid_conversion_keeps_the_previous_cdm_and_the_rerun_equals_an_uninterrupted_one(
        restored_reference, demo_omop_parquet, pipeline_env, tmp_path):
    uri = restored_reference["uri"]
    sample = tmp_path / "sample"
    shutil.copytree(restored_reference["sample"], sample)
    before = file_contents(sample / "restored_omop")
    command = restore_command(sample, demo_omop_parquet, uri)
    killed_group(command, pipeline_env, lambda: any(tmp_path.glob("sample/.restored_omop.tmp-*/person/*.parquet")),
                 "the converter's first persons")
    assert file_contents(sample / "restored_omop") == before  # (a)
    assert cdm_fingerprint(uri, RESTORE_SCHEMA) == restored_reference["schema"]

    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert restored_tables(sample) == restored_tables(restored_reference["sample"])  # (c)
    assert cdm_fingerprint(uri, RESTORE_SCHEMA) == restored_reference["schema"]


def test_restore_on_a_full_disk_is_one_line_and_keeps_the_previous_cdm(small_disk, restored_reference,
                                                                        demo_omop_parquet, pipeline_env):
    disk, fill = small_disk
    sample = disk / "sample"
    shutil.copytree(restored_reference["sample"], sample)
    before = file_contents(sample)
    fill(sample / "restored_omop")
    result = completed(restore_command(sample, demo_omop_parquet, restored_reference["uri"]), pipeline_env)
    assert_full_disk_error(result)
    assert file_contents(sample) == before
    assert cdm_fingerprint(restored_reference["uri"], RESTORE_SCHEMA) == restored_reference["schema"]


# ---------------------------------------------------------------------------------------------
# Step 6: the report (killed while it writes)
# ---------------------------------------------------------------------------------------------


def test_report_killed_while_it_writes_keeps_the_previous_report_and_the_rerun_equals_an_uninterrupted_one(
        generated_reference, demo_patient_sequence, pipeline_env, tmp_path):
    output = tmp_path / "synthetic"
    shutil.copytree(generated_reference.parent, output)
    command = [sys.executable, "inspect_synthetic.py", "--synthetic-dir", output, "--real-dir", demo_patient_sequence]
    first = completed(command, pipeline_env)
    assert first.returncode == 0, output_of(first)
    report = output / generated_reference.name / "report"
    before = file_contents(report)
    crashed_at(command, pipeline_env, "replace:before-swap")  # the new report written in full, not yet in place
    assert list(report.parent.glob(".report.tmp-*/report.json"))
    assert file_contents(report) == before  # (a)
    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)

    def numbers(text: bytes) -> dict:
        return {key: value for key, value in json.loads(text).items() if key not in ("seconds", "created")}

    assert numbers((report / "report.json").read_bytes()) == numbers(before["report.json"])  # (c)
    assert not list(report.parent.glob(".report.tmp-*"))


# ---------------------------------------------------------------------------------------------
# Step 7: prediction (killed mid-run; a full disk)
# ---------------------------------------------------------------------------------------------


def predict_command(uri: str, model_dir: Path, sequences: Path, output: Path) -> list:
    return [sys.executable, "predict.py", "--dsn", uri, "--cdm-schema", "demo_small", "--cohort-schema",
            "predict_faults", "--sql", DEFAULT_COHORT_SQL, "--patient-sequence-dir", sequences, "--model-dir",
            model_dir, "--output-dir", output,
            "--no-zero-shot", "--no-fine-tune", "--n-boot", "50"]  # the folder swap is tested, not the methods


@pytest.fixture(scope="module")
def prediction_reference(tiny_model, demo_patient_sequence, demo_omop_parquet, pg_server, pipeline_env,
                         tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("prediction_reference") / "prediction"
    command = predict_command(pg_server, tiny_model["model_dir"], demo_patient_sequence, output)
    result = completed(command, pipeline_env)
    assert result.returncode == 0, output_of(result)
    return output


def predictions(folder: Path) -> dict:
    """The report without what differs between equal runs: timings and the model's path, at the top and per task."""
    def deterministic(entry: dict) -> dict:
        return {key: value for key, value in entry.items() if not key.startswith("seconds") and key != "model_dir"}
    report = deterministic(json.loads((folder / "predict_report.json").read_text()))
    return {**report, "tasks": [deterministic(task) for task in report["tasks"]]}


def test_prediction_killed_mid_run_keeps_the_previous_report_and_the_rerun_equals_an_uninterrupted_one(
        prediction_reference, tiny_model, demo_patient_sequence, pg_server, pipeline_env, tmp_path):
    output = tmp_path / "prediction"
    shutil.copytree(prediction_reference, output)
    before = file_contents(output)
    command = predict_command(pg_server, tiny_model["model_dir"], demo_patient_sequence, output)
    killed_group(command, pipeline_env, lambda: any(tmp_path.glob(".prediction.tmp-*/cohort_sequences/*/*.parquet")),
                 "the histories written")
    assert file_contents(output) == before  # (a)
    again = completed(command, pipeline_env)
    assert again.returncode == 0, output_of(again)  # (b)
    assert predictions(output) == predictions(prediction_reference)  # (c)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".prediction.tmp")] == []


def test_prediction_on_a_full_disk_is_one_line_and_keeps_the_previous_report(
        small_disk, prediction_reference, tiny_model, demo_patient_sequence, pg_server, pipeline_env):
    disk, fill = small_disk
    output = disk / "prediction"
    shutil.copytree(prediction_reference, output)
    before = file_contents(output)
    fill(output)
    result = completed(predict_command(pg_server, tiny_model["model_dir"], demo_patient_sequence, output),
                       pipeline_env)
    assert_full_disk_error(result)
    assert file_contents(output) == before


def test_export_cut_off_from_the_database_is_one_line_and_keeps_the_previous_export(demo_omop_parquet, pg_server,
                                                                                     pipeline_env, tmp_path):
    output = tmp_path / "omop"
    shutil.copytree(demo_omop_parquet, output)
    before = file_contents(output)
    process = start_in_own_group([*export_command(pg_server, output), "--jobs", "1"], pipeline_env,
                                 stderr=subprocess.PIPE)
    wait_for(lambda: any(output.glob(".*.tmp-*")), process, "a table's staging folder")
    with frozen(process):  # mid-table: the connection goes while a table is being written
        assert any(output.glob(".*.tmp-*"))
        query(pg_server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
              ("cehrgpt-export%",))
    error_line(outcome(process))
    assert file_contents(output) == before
