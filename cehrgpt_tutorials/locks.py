"""One writer per output: every step holds an exclusive lock on what it writes.

A folder or file OUTPUT is locked through the file `.OUTPUT.lock` beside it (beside, not inside: a
model folder moved aside by --fresh or a sequence folder swapped into place keeps the same lock).
The lock is flock(2), so the kernel releases it when the last process holding it ends, however it
ends (SIGKILL included): a stale lock file never blocks a later run. A second run that finds the
lock taken stops at once with one line naming the output and the process that holds it.

A schema is locked with a PostgreSQL advisory lock on its name (see `schema_lock`), held by the
connection that writes it and released by the server when that connection ends.

Python steps:   with output_lock(model_dir, "the model folder"): ...
Shell scripts:  hold_lock in scripts/shell_helpers.sh opens the lock file on a descriptor of the
                script and runs `python -m cehrgpt_tutorials.locks take FD OUTPUT WHAT PID`, which
                locks that descriptor: the script and every program it starts hold the lock (and
                CEHRGPT_HELD_LOCKS tells them so).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import sys
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail

SCHEMA_LOCK_NAMESPACE = 0x43454852  # "CEHR": the first key of our advisory locks, the schema's hash the second


def lock_file_for(output: Path) -> Path:
    """The lock file of an output folder or file: `.NAME.lock` in the folder that holds it."""
    output = Path(output).resolve()
    return output.parent / f".{output.name.lstrip('.')}.lock"


def process_description(pid: int) -> str:
    """The command line of a running process, as `ps` would show it (its pid when unreadable)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"process {pid}"
    command = " ".join(word.decode(errors="replace") for word in words if word)
    return command[:200] or f"process {pid}"


def holder_line(pid: int) -> str:
    started = datetime.datetime.now().isoformat(timespec="seconds")
    return f"{pid}\t{started}\t{process_description(pid)}\n"


def describe_holder(lock_file: Path) -> str:
    """'process 123 (sh train_cehrgpt.sh ..., since 2026-12-05T10:00:00)' from what the holder wrote."""
    try:
        pid, started, command = lock_file.read_text().rstrip("\n").split("\t", 2)
    except (OSError, ValueError):
        return "another process"  # the holder has the lock but has not written its line yet
    return f"process {pid} ({command}, since {started})"


def locked_message(output: Path, what: str, lock_file: Path) -> str:
    return (f"{what} {output} is being written by {describe_holder(lock_file)}: wait for that run to finish "
            f"or stop it, then run this again (lock: {lock_file})")


def take(descriptor: int, output: Path, what: str, holder_pid: int) -> None:
    """Lock the open lock file `descriptor` for holder_pid, or raise PipelineError naming who holds it."""
    lock_file = lock_file_for(output)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PipelineError(locked_message(output, what, lock_file)) from None
    line = holder_line(holder_pid).encode()
    try:  # written over the previous holder's line, then cut to length: no new disk space when it fits
        os.pwrite(descriptor, line, 0)
        os.ftruncate(descriptor, len(line))
    except OSError as error:
        raise PipelineError(f"cannot write the lock file {lock_file}: {describe_os_error(error)}") from None


_held: dict[Path, int] = {}  # lock file -> depth: a lock this process holds is taken again for free
# Lock files a parent shell holds on a descriptor this process inherited (hold_lock exports them).
INHERITED_LOCKS_VARIABLE = "CEHRGPT_HELD_LOCKS"


def _inherited() -> set[Path]:
    return {Path(name) for name in os.environ.get(INHERITED_LOCKS_VARIABLE, "").split(os.pathsep) if name}


def holds_lock_on(path: Path) -> bool:
    """Whether this process holds (or inherited) the lock of `path` or of a folder that contains it."""
    path = Path(path).resolve()
    held = set(_held) | _inherited()
    return any(lock_file_for(folder) in held for folder in (path, *path.parents) if folder != folder.parent)


@contextlib.contextmanager
def output_lock(output: Path, what: str):
    """Hold the exclusive lock on `output` for the duration of the block (PipelineError if taken).

    Re-entrant within a process: a step that locks its output may write it with atomic_directory, which
    locks it too.
    """
    lock_file = lock_file_for(output)
    if lock_file in _inherited():
        yield
        return
    if lock_file in _held:
        _held[lock_file] += 1
        try:
            yield
        finally:
            _held[lock_file] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise PipelineError(f"cannot open the lock file {lock_file}: {error.strerror}") from None
    try:
        take(descriptor, Path(output).resolve(), what, os.getpid())
        _held[lock_file] = 1
        yield
    finally:
        _held.pop(lock_file, None)
        os.close(descriptor)  # releases the lock; the file stays (removing it would race a newcomer)


def schema_lock(connection, schema: str, what: str = "schema") -> None:
    """Take a session advisory lock on `schema` for `connection`, or raise PipelineError naming its holder.

    Held until the connection closes (the server releases it when the client dies).
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (SCHEMA_LOCK_NAMESPACE, schema))
        taken = cursor.fetchone()[0]
        if not taken:
            cursor.execute(
                "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = %s::oid AND l.objid = hashtext(%s)::oid LIMIT 1",
                (SCHEMA_LOCK_NAMESPACE, schema),
            )
            row = cursor.fetchone()
    connection.commit()
    if not taken:
        holder = (f"{row[1] or 'a client'} (PostgreSQL backend {row[0]}, connected at "
                  f"{row[2]:%Y-%m-%d %H:%M:%S})") if row else "another connection"
        raise PipelineError(f"{what} {schema} is being written by {holder}: wait for that run to finish "
                            "or stop it, then run this again")


def application_name(step: str) -> str:
    """What a step's connections call themselves, so a locked schema names the process holding it."""
    return f"cehrgpt-tutorial {step} (pid {os.getpid()})"


def main(argv=None) -> None:
    """`python -m cehrgpt_tutorials.locks path OUTPUT` | `take FD OUTPUT WHAT PID` (for shell_helpers.sh)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["path"] and len(argv) == 2:
        print(lock_file_for(Path(argv[1])))
    elif argv[:1] == ["take"] and len(argv) == 5:
        try:
            take(int(argv[1]), Path(argv[2]).resolve(), argv[3], int(argv[4]))
        except PipelineError as error:
            fail(str(error))
    else:
        fail("usage: python -m cehrgpt_tutorials.locks path OUTPUT | take FD OUTPUT WHAT PID", exit_code=2)


if __name__ == "__main__":
    main()
