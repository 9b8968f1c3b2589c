"""The environment every step runs on (setup_env.sh, make setup, Spark + cehrgpt imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, source_setup_env
from helpers import EXPORTED, clean_user_env


def java_major_version(java_home: str) -> int:
    line = subprocess.run([f"{java_home}/bin/java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    version = line.split('"')[1]
    return int(version.split(".")[1]) if version.startswith("1.") else int(version.split(".")[0])


def test_sourcing_sets_every_variable(tmp_path):
    env = source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf")))
    for name in EXPORTED:
        assert env.get(name), f"{name} not set"
    assert env["USE_TF"] == "0"
    assert env["OMOP_DIR"] == str(REPO_ROOT / "omop_synthea")
    assert env["CEHR_GPT_MODEL_DIR"] == str(REPO_ROOT / "omop_synthea" / "cehrgpt_model")
    assert env["SYNTHETIC_DATA_OUTPUT_DIR"] == str(REPO_ROOT / "omop_synthea" / "synthetic_data")
    assert java_major_version(env["JAVA_HOME"]) in (8, 11)
    assert Path(env["PYSPARK_PYTHON"]).resolve() == Path(env["PYSPARK_DRIVER_PYTHON"]).resolve()
    assert f"--master {env['SPARK_MASTER']}" in env["SPARK_SUBMIT_OPTIONS"]
    assert f"--driver-memory {env['SPARK_DRIVER_MEMORY']}" in env["SPARK_SUBMIT_OPTIONS"]
    assert str(REPO_ROOT) in env["PYTHONPATH"].split(":")
    # The java found first on PATH is the chosen one, so spark-submit and a learner's `java` agree.
    java_on_path = shutil.which("java", path=env["PATH"])
    assert Path(java_on_path).resolve() == (Path(env["JAVA_HOME"]) / "bin" / "java").resolve()


def test_user_values_are_kept_and_java_17_is_replaced(tmp_path):
    preset = clean_user_env(
        SPARK_CONF_DIR=str(tmp_path / "conf"), SPARK_MASTER="local[1]", SPARK_DRIVER_MEMORY="3g",
        OMOP_DIR="/data/my_omop", JAVA_HOME="/usr/lib/jvm/java-17-openjdk-amd64",
    )
    env = source_setup_env(base=preset)
    assert env["SPARK_MASTER"] == "local[1]"
    assert env["SPARK_DRIVER_MEMORY"] == "3g"
    assert env["SPARK_SUBMIT_OPTIONS"].startswith("--master local[1] --driver-memory 3g")
    assert env["OMOP_DIR"] == "/data/my_omop"
    assert java_major_version(env["JAVA_HOME"]) == 11


def test_spark_defaults_idempotent_and_user_lines_survive(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = conf_dir / "spark-defaults.conf"
    conf.write_text("spark.eventLog.enabled false\nspark.sql.shuffle.partitions 7\n")
    source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(conf_dir)))
    first = conf.read_text()
    source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(conf_dir)))
    assert conf.read_text() == first, "re-sourcing changed spark-defaults.conf"
    lines = first.splitlines()
    assert "spark.eventLog.enabled false" in lines
    # The user's own shuffle setting wins: ours is left out rather than duplicated.
    assert [line for line in lines if line.startswith("spark.sql.shuffle.partitions")] == [
        "spark.sql.shuffle.partitions 7"
    ]
    for mode in ("int96RebaseModeInRead", "int96RebaseModeInWrite", "datetimeRebaseModeInRead",
                 "datetimeRebaseModeInWrite"):
        assert f"spark.sql.legacy.parquet.{mode} CORRECTED" in lines
    assert "spark.ui.showConsoleProgress true" in lines
    assert "spark.sql.session.timeZone UTC" in lines


def test_sourcing_never_kills_the_shell(tmp_path):
    # A user's `set -e` shell, a broken JAVA_HOME and no spark-defaults folder we may write: the
    # shell must survive the source and go on to the next command.
    unwritable = tmp_path / "file-not-dir"
    unwritable.write_text("")
    script = f'set -e; source "{REPO_ROOT}/setup_env.sh"; echo STILL-ALIVE; false_cmd_status=$?; echo $USE_TF'
    env = clean_user_env(JAVA_HOME="/nonexistent/java", SPARK_CONF_DIR=str(unwritable / "conf"))
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["STILL-ALIVE", "0"]
    assert "Java" in result.stderr  # it said which Java it chose instead of the broken one


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_sourcing_from_zsh_in_another_folder(tmp_path):
    env = source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf")), shell="zsh")
    assert env["OMOP_DIR"] == str(REPO_ROOT / "omop_synthea")
    assert java_major_version(env["JAVA_HOME"]) in (8, 11)


@pytest.mark.slow
def test_spark_submit_runs_a_python_udf_and_keeps_datetimes_on_their_date(tmp_path):
    # The machine's zone is New York: without setup_env.sh's session time zone, Spark would read
    # export_omop.py's zone-less midnight datetimes as UTC and put them on the day before.
    table = tmp_path / "visits"
    table.mkdir()
    job = tmp_path / "udf_job.py"
    job.write_text(
        "import datetime, sys\n"
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "from pyspark.sql import SparkSession, functions as F, types as T\n"
        "pq.write_table(pa.table({'d': [datetime.date(2020, 1, 1)],\n"
        "                         'dt': pa.array([datetime.datetime(2020, 1, 1)], pa.timestamp('us'))}),\n"
        "               sys.argv[1] + '/part-0.parquet')\n"
        "spark = SparkSession.builder.appName('udf-check').getOrCreate()\n"
        "square = F.udf(lambda x: x * x, T.LongType())\n"
        "rows = spark.range(5).select(square('id').alias('sq')).collect()\n"
        "print('RESULT', sorted(r.sq for r in rows))\n"
        "gap = spark.read.parquet(sys.argv[1]).selectExpr('datediff(to_date(dt), d) AS gap').first().gap\n"
        "print('GAP', gap)\n"
        "spark.stop()\n"
    )
    env = source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf"), TZ="America/New_York"))
    result = subprocess.run(
        ["sh", "-c", f'spark-submit $SPARK_SUBMIT_OPTIONS "{job}" "{table}"'], env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT [0, 1, 4, 9, 16]" in result.stdout
    assert "GAP 0" in result.stdout


@pytest.mark.slow  # imports the cehrgpt runner (torch, transformers)
def test_pretrain_runner_imports_under_the_environment(tmp_path):
    env = source_setup_env(base=clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf")))
    result = subprocess.run(
        ["python", "-c", "import cehrgpt.runners.hf_cehrgpt_pretrain_runner, transformers; print(transformers.__version__)"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "4.44.1"


def _non_310_python() -> str | None:
    for candidate in ("/usr/bin/python3", "python3.11", "python3.12", "python3.13", "python3"):
        path = shutil.which(candidate)
        if path and subprocess.run(
            [path, "-c", "import sys; sys.exit(sys.version_info[:2] == (3, 10))"]
        ).returncode == 0:
            return path
    return None


@pytest.mark.parametrize("with_python_variable", [True, False])
def test_make_setup_without_python_310_fails_clearly(tmp_path, with_python_variable):
    other_python = _non_310_python()
    if other_python is None:
        pytest.skip("no non-3.10 Python interpreter on this machine to simulate with")
    # A PATH that has make, sh and coreutils but no python3.10, and no pyenv to fall back to.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "cat", "cksum", "cut", "rm", "dirname", "bash"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "no-pyenv")}
    if with_python_variable:
        env["PYTHON"] = other_python
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "setup", f"VENV={venv}"], env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[0]
    assert "Python 3.10" in message and "pyspark 3.1.2" in message
    assert not (venv / ".setup-complete").exists()
    assert not venv.exists(), "nothing should be created when no interpreter qualifies"


def test_constraints_pin_every_installed_distribution():
    from importlib import metadata

    pins = {}
    for line in (REPO_ROOT / "cehrgpt_tutorials" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    assert "xformers<0.0.1" in (REPO_ROOT / "cehrgpt_tutorials" / "constraints.txt").read_text()
    installed = {
        dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in metadata.distributions()
    }
    installed.pop("cehrgpt-tutorials", None)
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"installed but not pinned: {unpinned}"
    mismatched = {name: (installed[name], pins[name]) for name in installed if installed[name] != pins[name]}
    assert not mismatched, f"installed != pinned: {mismatched}"
    assert sys.version_info[:2] == (3, 10)


def test_java_major_is_the_number_people_call_the_version_by():
    from cehrgpt_tutorials.environment import java_major

    assert [java_major(v) for v in ("1.8.0_292", "11.0.2", "11", "17.0.2", "")] == ["8", "11", "11", "17", ""]
