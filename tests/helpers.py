"""What the test modules share: a failed run's error line, signals that land where a test wants them,
snapshots of folders, and queries on the test server.

One of each, so every test holds a failed run, an interrupted run or an untouched folder to the same
rule. Fixtures live in conftest.py; data builders that several modules use live in synthetic_data.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
from conftest import REPO_ROOT, output_of

# ---------------------------------------------------------------------------------------------
# Errors: one line that says what is wrong, no traceback
# ---------------------------------------------------------------------------------------------


def error_line(result, returncode: int | None = 1, alone: bool = False) -> str:
    """The one `error: ...` line of a failed run, asserting what the user must see: the exit code
    (`returncode`; None: any non-zero one), no traceback, exactly one stderr line starting with
    "error:", and with alone=True nothing else on stderr."""
    if returncode is None:
        assert result.returncode != 0, output_of(result)
    else:
        assert result.returncode == returncode, output_of(result)
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-4000:]
    if alone:
        assert [line for line in result.stderr.splitlines() if line.strip()] == errors, result.stderr[-4000:]
    return errors[0]


# ---------------------------------------------------------------------------------------------
# Folders: what a deletion or rewrite would change
# ---------------------------------------------------------------------------------------------


def file_contents(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too, lock files aside): relative path -> its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(Path(folder).rglob("*"))
            if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".lock"))}


def file_stats(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder: relative path -> (size, mtime in ns). For folders too large to read
    whole (a trained model); a rewrite in place changes the mtime."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def visible_names(folder: Path) -> list[str]:
    """The names in folder, hidden ones (locks, staging dot-folders) left out, sorted."""
    return sorted(path.name for path in Path(folder).iterdir() if not path.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# Processes: wait for an event, then freeze the process so the signal lands exactly there
# ---------------------------------------------------------------------------------------------


def start_in_own_group(command: list, environment: dict, cwd: Path = REPO_ROOT, stderr=subprocess.STDOUT,
                       **options) -> subprocess.Popen:
    """Start command (its words, paths allowed) as the leader of a new process group, text output piped."""
    return subprocess.Popen([str(word) for word in command], env=environment, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, start_new_session=True, **options)


def wait_for(event: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll until event() is true. Fails if the process ends first (it got past the point the test
    wants to reach) or after `timeout` seconds: a guard against a hang, not a statement about speed."""
    deadline = time.monotonic() + timeout
    while not event():
        if process.poll() is not None:
            rest = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"finished before {what}:\n" + (rest or "")[-3000:])
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.02)


def kill_when(process: subprocess.Popen, event: Callable[[], bool], timeout: float = 300,
              what: str = "the event") -> None:
    """SIGKILL the process's whole group as soon as event() is true: frozen first, and event() checked
    again while frozen, so the kill lands at that point; fails if the process ends before the event."""
    wait_for(event, process, what, timeout)
    os.killpg(process.pid, signal.SIGSTOP)
    assert event(), what
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# The test server
# ---------------------------------------------------------------------------------------------


def query(uri: str, statement: str, parameters=None) -> list[tuple]:
    """The rows of one statement, read in a UTC session (timestamps compare as the export writes them)."""
    connection = psycopg2.connect(uri)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET TimeZone = 'UTC'")
            cursor.execute(statement, parameters)
            return cursor.fetchall()
    finally:
        connection.close()


def execute(uri: str, statements: str, *parameters) -> None:
    """Run statements in autocommit (CREATE DATABASE and friends cannot run in a transaction)."""
    connection = psycopg2.connect(uri)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statements, parameters or None)
    finally:
        connection.close()


def count(uri: str, schema: str, table: str) -> int:
    return query(uri, f'SELECT count(*) FROM "{schema}"."{table}"')[0][0]


# ---------------------------------------------------------------------------------------------
# More on processes: a signal checked against the event while frozen, a frozen stretch, the outcome
# ---------------------------------------------------------------------------------------------


def signal_when(process: subprocess.Popen, event: Callable[[], bool], signum: int, what: str,
                timeout: float = 300, group: bool = True) -> None:
    """Send signum as soon as event() is true: the process (its group by default) is frozen first and
    event() checked again while frozen, so the signal lands at that point; fails if the process ends
    before the event. Unlike kill_when, the process goes on (SIGCONT) to handle the signal."""
    wait_for(event, process, what, timeout)
    send = (lambda number: os.killpg(process.pid, number)) if group else process.send_signal
    send(signal.SIGSTOP)
    try:
        assert event(), f"{what}: no longer true once frozen"
        send(signum)
    finally:
        send(signal.SIGCONT)


@contextlib.contextmanager
def frozen(process: subprocess.Popen, group: bool = True):
    """The process (its whole group by default) stopped for the block: what the block does happens at
    the point the process had reached, and it goes on afterwards."""
    send = (lambda number: os.killpg(process.pid, number)) if group else process.send_signal
    send(signal.SIGSTOP)
    try:
        yield
    finally:
        send(signal.SIGCONT)


def outcome(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """The finished process as a CompletedProcess (for error_line); timeout guards against a hang."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout or "", stderr or "")


# ---------------------------------------------------------------------------------------------
# A new user's shell, and data builders more than one module uses
# ---------------------------------------------------------------------------------------------

EXPORTED = [
    "OMOP_DIR", "CEHR_GPT_DATA_DIR", "CEHR_GPT_MODEL_DIR", "SYNTHETIC_DATA_OUTPUT_DIR",
    "SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "JAVA_HOME", "USE_TF",
    "SPARK_MASTER", "SPARK_DRIVER_MEMORY", "SPARK_EXECUTOR_MEMORY", "SPARK_SUBMIT_OPTIONS",
]  # what setup_env.sh exports


def clean_user_env(**overrides: str) -> dict[str, str]:
    """A new user's shell: none of our variables set yet (the test process itself runs sourced)."""
    environment = {
        name: value for name, value in os.environ.items()
        if name not in EXPORTED and not name.startswith(("SPARK_", "PYSPARK_"))
        and name not in ("VIRTUAL_ENV", "PYTHONPATH", "CEHRGPT_TUTORIAL_ROOT")
    }
    environment.update(overrides)
    return environment


def person_csv(folder: Path, demo_csv_dir: Path, rows: int) -> Path:
    """A PERSON.csv with the demo's header and its first `rows` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (demo_csv_dir / "PERSON.csv").read_text().splitlines()
    (folder / "PERSON.csv").write_text("\n".join(lines[: rows + 1]) + "\n")
    return folder
