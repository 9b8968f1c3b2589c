"""Named moments at which the fault tests kill a step, as a power cut or the OOM killer would.

`crash_point("replace:after-swap")` does nothing unless the environment says
CEHRGPT_CRASH_AT=replace:after-swap; then it sends SIGKILL to the whole process group at exactly that
moment, with no chance to clean up. tests/test_faults.py uses it for the moments no outside observer
can catch (the instant between two renames); shell scripts have `crash_point NAME` (shell_helpers.sh).
"""

from __future__ import annotations

import os
import signal

CRASH_VARIABLE = "CEHRGPT_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)
