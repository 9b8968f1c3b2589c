"""Writing files and folders so that a reader, or the next run, never sees a half-written one.

- atomic_file(path): write a temporary file beside it, renamed over it when complete.
- atomic_directory(folder): fill a temporary folder beside it, swapped into place when complete. The
  swap is one rename(2) with RENAME_EXCHANGE where the file system has it (Linux: ext4, xfs, btrfs,
  tmpfs), so `folder` is always either the old or the new one; elsewhere two renames, and a run killed
  between them leaves the old folder at `.NAME.old-*`, which the next atomic_directory(folder) puts back.
  It holds the folder's lock (locks.output_lock) while it writes, unless this process holds the lock of
  a folder above it, so it may remove what a killed run left beside the folder (`.NAME.tmp-*`, `.NAME.old-*`).
- replace_directory(new, folder): the swap alone, for a folder another program filled (Spark, the
  generator, cehrgpt's converter); `python -m cehrgpt_tutorials.files replace NEW FOLDER` from shell,
  and `replace-each STAGING FOLDER` for every folder a program wrote into a staging folder.

Temporary names start with '.', which Spark, pyarrow and glob('*.parquet') all skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.faults import crash_point
from cehrgpt_tutorials.locks import holds_lock_on, output_lock

RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def _renameat2():
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2() if sys.platform.startswith("linux") else None


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (renameat2 RENAME_EXCHANGE); False where unsupported
    (or where CEHRGPT_NO_RENAME_EXCHANGE is set: the tests' way to take the two-rename path here)."""
    if _RENAMEAT2 is None or os.environ.get("CEHRGPT_NO_RENAME_EXCHANGE"):
        return False
    if _RENAMEAT2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # this file system cannot
        return False
    raise OSError(error, f"cannot swap {first} and {second}: {os.strerror(error)}")


def leftovers(target: Path) -> list[Path]:
    """What interrupted writes of `target` left beside it: `.NAME.tmp-*` and `.NAME.old-*`."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    return sorted(path for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*")
                  for path in target.parent.glob(pattern))


def restore_interrupted_swap(target: Path) -> None:
    """Put the previous folder back where a swap was killed between its two renames (target absent)."""
    target = Path(target)
    if target.exists():
        return
    previous = [path for path in leftovers(target) if ".old-" in path.name]
    if previous:
        newest = max(previous, key=lambda path: path.stat().st_mtime)
        os.rename(newest, target)
        print(f"note: put back {target} (a run was stopped while replacing it)", flush=True)


def remove_leftovers(target: Path) -> None:
    """Restore an interrupted swap, then delete the temporary folders of killed runs. Call it holding
    the lock on `target`: without it they could be another run's work in progress."""
    restore_interrupted_swap(target)
    for path in leftovers(target):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


LEFTOVER_NAME = re.compile(r"^\.(.+)\.(?:tmp|old)-[0-9a-f]+$")


def remove_leftovers_in(folder: Path) -> None:
    """remove_leftovers for every entry of `folder` that a killed run left something beside."""
    folder = Path(folder)
    if folder.is_dir():
        for name in sorted({match.group(1) for entry in folder.iterdir() if (match := LEFTOVER_NAME.match(entry.name))}):
            remove_leftovers(folder / name)


def replace_directory(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target` (a sibling), then delete what was there."""
    new, target = Path(new), Path(target)
    crash_point("replace:before-swap")
    if target.exists() and exchange(new, target):
        crash_point("replace:after-swap")
        shutil.rmtree(new)  # it now holds the previous folder
        return
    if not target.exists():
        os.rename(new, target)
        return
    previous = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, previous)
    crash_point("replace:between-renames")  # killed here: restore_interrupted_swap puts it back
    os.rename(new, target)
    crash_point("replace:after-swap")
    shutil.rmtree(previous)


def replace_each(staging: Path, folder: Path, last: tuple[str, ...] = ()) -> None:
    """Replace folder/NAME by staging/NAME for every entry of the staging folder (the names in `last`
    last), each in one step; then remove the emptied staging folder."""
    staging, folder = Path(staging), Path(folder)
    for entry in sorted(staging.iterdir(), key=lambda path: (path.name in last, path.name)):
        if entry.is_dir() and not entry.is_symlink():
            replace_directory(entry, folder / entry.name)
        else:
            os.replace(entry, folder / entry.name)
    staging.rmdir()


def parquet_files(folder: Path) -> list[Path]:
    """The Parquet files of a folder as Spark writes them (part files, train/ and test/ included), sorted.

    Skips what Spark and our atomic writes leave beside them: names starting with '.' or '_'
    (_SUCCESS, .crc files, temporary files), at any depth. A file path is returned as itself.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    files = []
    for path in folder.rglob("*.parquet"):
        parts = path.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in parts):
            continue
        if path.is_file():
            files.append(path)
    return sorted(files)


@contextlib.contextmanager
def atomic_file(target: Path, suffix: str = ""):
    """Yield a temporary path beside `target`; on success rename it over `target`.

    On any exception (Ctrl-C included) the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        yield temporary
        crash_point("atomic-file:before-rename")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(target: Path, what: str = "the folder"):
    """Yield a fresh temporary folder beside `target`; on success swap it into place.

    The previous `target` (if any) stays intact until the new one is complete; on failure the
    temporary folder is deleted. Holds the lock on `target` throughout (PipelineError if another run does).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A step that holds the lock of a folder above (the export's output folder) covers it already.
    lock = contextlib.nullcontext() if holds_lock_on(target) else output_lock(target, what)
    with lock:
        remove_leftovers(target)
        temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            yield temporary
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        replace_directory(temporary, target)


def main(argv=None) -> None:
    """`python -m cehrgpt_tutorials.files replace NEW FOLDER` | `replace-each STAGING FOLDER [--last NAME]`
    | `clean FOLDER` | `clean-all PARENT` (for the shell scripts)."""
    argv = sys.argv[1:] if argv is None else argv
    usage = ("usage: python -m cehrgpt_tutorials.files replace NEW FOLDER | replace-each STAGING FOLDER "
             "[--last NAME] | clean FOLDER | clean-all PARENT")
    try:
        if argv[:1] == ["replace"] and len(argv) == 3:
            replace_directory(Path(argv[1]), Path(argv[2]))
        elif argv[:1] == ["replace-each"] and len(argv) in (3, 5) and argv[3:4] in ([], ["--last"]):
            replace_each(Path(argv[1]), Path(argv[2]), tuple(argv[4:]))
        elif argv[:1] == ["clean"] and len(argv) == 2:
            remove_leftovers(Path(argv[1]))
        elif argv[:1] == ["clean-all"] and len(argv) == 2:
            remove_leftovers_in(Path(argv[1]))
        else:
            fail(usage, exit_code=2)
    except OSError as error:
        fail(f"{error.strerror or error}: {error.filename or argv[-1]}")
    except PipelineError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
