"""`make demo`'s whole chain on a small slice of the demo data with a tiny model.

One real run of every step (embedded PostgreSQL -> export -> Spark -> cleanup -> train -> generate ->
restore -> inspect), then the properties that matter: each step printed the learner's command and
left its marker, the synthetic CDM sits in its own schema beside an untouched cdm, the report counts
the sequences, those converted and the exact copies as the outputs show them, a re-run redoes nothing,
and a failing step stops the run with its log and is resumed from there. Generation is seeded
(GENERATION_SEED), so the patients the tiny model writes, and whether one converts, are the same every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from conftest import cdm_fingerprint, run_script
from helpers import file_stats, query

from cehrgpt_tutorials.pipeline.steps import demo_steps

pytestmark = pytest.mark.slow

SLICE_PERSONS = 300
NUM_PATIENTS = 40  # the tiny model writes about 1 convertible patient in 5
GENERATION_SEED = 7  # the same 40 patients every run: whether one converts is not left to chance


@pytest.fixture(scope="module")
def demo_env(pipeline_env, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("demo")
    return dict(
        pipeline_env,
        OMOP_DIR=str(outputs / "omop_synthea"),
        CEHR_GPT_DATA_DIR=str(outputs / "omop_synthea"),
        CEHR_GPT_MODEL_DIR=str(outputs / "omop_synthea" / "cehrgpt_model"),
        SYNTHETIC_DATA_OUTPUT_DIR=str(outputs / "omop_synthea" / "synthetic_data"),
        DEMO_MAX_PERSONS=str(SLICE_PERSONS),
        TRAIN_PROFILE="tiny",
        NUM_PATIENTS=str(NUM_PATIENTS),
        GENERATION_SEED=str(GENERATION_SEED),
    )


@pytest.fixture(scope="module")
def first_run(demo_env):
    """`make demo` in two goes: the database step alone (to take the fingerprint of cdm as loaded),
    then `run all`, which resumes after it. Its result holds the output of both."""
    database = run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "run", "demo-db"], demo_env, timeout=600)
    assert database.returncode == 0, database.stdout[-4000:] + database.stderr[-4000:]
    cdm_before = cdm_fingerprint(server_uri(demo_env))
    result = run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "run", "all"], demo_env, timeout=1800)
    result.stdout = database.stdout + result.stdout
    result.cdm_before = cdm_before
    yield result
    run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "clean"], demo_env, timeout=120)


def server_uri(demo_env) -> str:
    from cehrgpt_tutorials.db import start_embedded_server

    return start_embedded_server(Path(demo_env["OMOP_DIR"]) / "pgdata")


def sample_folder(demo_env) -> Path:
    return Path(demo_env["SYNTHETIC_DATA_OUTPUT_DIR"]) / "top_p10000_constrained"


def outputs_as_written(demo_env) -> dict:
    """Every output file of the demo (size, mtime), the database's own files, the logs and the lock files
    aside, and the rows of both CDM schemas."""
    omop = Path(demo_env["OMOP_DIR"])
    files = {name: stat for name, stat in file_stats(omop).items()
             if name.split("/")[0] not in ("pgdata", "logs")
             and not (Path(name).name.startswith(".") and name.endswith(".lock"))}
    uri = server_uri(demo_env)
    return {"files": files, "cdm": cdm_fingerprint(uri), "synthetic_cdm": cdm_fingerprint(uri, "synthetic_cdm")}


def test_every_step_runs_in_order_with_its_command(first_run, demo_env):
    assert first_run.returncode == 0, first_run.stdout[-4000:] + first_run.stderr[-4000:]
    output = first_run.stdout
    positions = []
    for step in demo_steps(demo_env):
        assert f"$ {step.command}" in output, f"step {step.name} did not print its command"
        if step.name == "generate":  # the seed reaches the generator's command
            assert step.command.endswith(f" --seed {GENERATION_SEED}")
            assert [line for line in output.splitlines() if line.startswith("$ ")
                    and "-m cehrgpt_tutorials.generate " in line and line.endswith(f" --seed {GENERATION_SEED}")]
        positions.append(output.index(f"$ {step.command}"))
        assert (Path(demo_env["OMOP_DIR"]) / ".demo" / f"{step.name}.done").exists()
        assert f"--- {step.name} done in" in output
    assert positions == sorted(positions)
    assert "=== Summary" in output and "total wall time" in output


def test_synthetic_cdm_beside_an_untouched_cdm(first_run, demo_env):
    assert first_run.returncode == 0
    uri = server_uri(demo_env)
    assert query(uri, "SELECT count(*) FROM cdm.person") == [(SLICE_PERSONS,)]
    # Every table of cdm, row for row, as it was after the database step.
    assert len(first_run.cdm_before) >= 10
    assert cdm_fingerprint(uri) == first_run.cdm_before, "the chain changed schema cdm"
    synthetic_persons = query(uri, "SELECT count(*) FROM synthetic_cdm.person")[0][0]
    assert synthetic_persons > 0
    assert query(uri, "SELECT count(*) FROM synthetic_cdm.visit_occurrence")[0][0] > 0


def test_report_counts_the_generated_sequences_those_converted_and_the_exact_copies(first_run, demo_env):
    assert first_run.returncode == 0
    reports = list(Path(demo_env["SYNTHETIC_DATA_OUTPUT_DIR"]).glob("*/report/report.json"))
    assert reports == [sample_folder(demo_env) / "report" / "report.json"]
    report = json.loads(reports[0].read_text())
    generated = ds.dataset(sample_folder(demo_env) / "generated_sequences", format="parquet").to_table(
        columns=["person_id", "concept_ids"])
    assert report["num_sequences"] == generated.num_rows >= NUM_PATIENTS
    # Converted: the share of the generated sequences whose person is in schema synthetic_cdm.
    persons = {row[0] for row in query(server_uri(demo_env), "SELECT person_id FROM synthetic_cdm.person")}
    person_ids = generated.column("person_id").to_pylist()
    assert len(set(person_ids)) == len(person_ids)
    assert report["converted_fraction"] == pytest.approx(sum(p in persons for p in person_ids) / len(person_ids))
    assert report["converted_fraction"] > 0
    # Exact copies: generated sequences identical, token for token, to a real training sequence.
    real = ds.dataset(Path(demo_env["CEHR_GPT_DATA_DIR"]) / "patient_sequence" / "train", format="parquet")
    training = {tuple(tokens) for tokens in real.to_table(columns=["concept_ids"]).column(0).to_pylist()}
    copies = sum(tuple(tokens) in training for tokens in generated.column("concept_ids").to_pylist())
    assert (report["exact_copies"], report["exact_copy_fraction"]) == (copies, pytest.approx(copies / generated.num_rows))
    assert (reports[0].parent / "report.md").exists()


def test_second_run_skips_everything(first_run, demo_env):
    assert first_run.returncode == 0
    before = outputs_as_written(demo_env)
    assert before["files"] and before["synthetic_cdm"]
    second = run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "run", "all"], demo_env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already done, skipped") == len(demo_steps(demo_env))
    assert "$ " not in second.stdout  # no step command ran
    assert "=== Summary" in second.stdout
    # Nothing was redone: no output file written again, no table of either CDM changed.
    assert outputs_as_written(demo_env) == before


def test_failing_step_stops_with_its_log_and_resumes_there(first_run, demo_env, tmp_path):
    assert first_run.returncode == 0
    # Break the last step: inspect_synthetic.py on a synthetic folder with no sequences.
    (Path(demo_env["OMOP_DIR"]) / ".demo" / "inspect.done").unlink()
    broken = dict(demo_env, SYNTHETIC_DATA_OUTPUT_DIR=str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    failed = run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "run", "all"], broken, timeout=300)
    assert failed.returncode == 1
    assert "step 'inspect' failed" in failed.stderr
    assert "full log:" in failed.stderr and "inspect.log" in failed.stderr
    assert "=== Summary" not in failed.stdout
    assert not (Path(demo_env["OMOP_DIR"]) / ".demo" / "inspect.done").exists()
    # Fixed: the run resumes at inspect, skipping the seven steps before it.
    resumed = run_script(["-m", "cehrgpt_tutorials.pipeline.steps", "run", "all"], demo_env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("already done, skipped") == len(demo_steps(demo_env)) - 1
    assert "$ python inspect_synthetic.py" in resumed.stdout
