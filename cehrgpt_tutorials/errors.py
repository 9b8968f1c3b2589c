"""The one kind of error a user can act on, and how a command line reports it."""

from __future__ import annotations

import sys


class PipelineError(Exception):
    """An error the user can act on: the scripts print its message as one line and exit 1."""


def describe_os_error(error: OSError) -> str:
    """What an operating-system error was and where ("No space left on device: /data/x"), in one line."""
    reason = error.strerror or " ".join(str(error).split())
    return f"{reason}: {error.filename}" if error.filename else reason


def fail(message: str, exit_code: int = 1) -> None:
    """Print one clear line to stderr and exit non-zero (no traceback for expected errors)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)
