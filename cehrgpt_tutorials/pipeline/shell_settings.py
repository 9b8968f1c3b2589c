"""What the step scripts (scripts/*.sh) ask Python: their command line, parsed and checked, and the
settings they run with, handed back as shell assignments for the script to `eval`.

Decisions live here, where they have unit tests; the scripts keep the glue (locks, staging folders,
the official command lines they print and run). The parsing follows the scripts' own conventions:
`--name value` or `--name=value`, one `error:` line and exit 1 on anything else.
Standard library only: step 2 runs it with PYSPARK_PYTHON, which may lack the project's packages.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cehrgpt_tutorials.errors import PipelineError


@dataclass
class CommandLine:
    """A script's options: `valued` maps each spelling (-p, --patient-sequence-folder) to its name,
    `flags` likewise for options without a value (-h, --help -> help)."""

    valued: Mapping[str, str]
    flags: Mapping[str, str] = field(default_factory=dict)
    # The message for a word that is not an option; "" reports it as an unknown option.
    stray_word: str = ""

    def parse(self, arguments: Sequence[str]) -> dict[str, str | bool]:
        """{name: value} for the options given ({flag name: True} for flags). Stops at --help, as the
        scripts did, so `--help` after a bad option is an error and before one shows the help."""
        given: dict[str, str | bool] = {}
        words = list(arguments)
        while words:
            option = words.pop(0)
            if option in self.flags:
                given[self.flags[option]] = True
                if self.flags[option] == "help":
                    return given
                continue
            name, equals, value = option.partition("=")
            if option in self.valued:
                if not words:
                    raise PipelineError(f"{option} needs a value (see --help)")
                given[self.valued[option]] = words.pop(0)
            elif equals and name.startswith("--") and name in self.valued:
                given[self.valued[name]] = value
            elif option.startswith("-") or not self.stray_word:
                raise PipelineError(f"unknown option '{name}' (see --help)")
            else:
                raise PipelineError(self.stray_word.format(word=option))
        return given


def positive_whole_number(option: str, value: str) -> int:
    """VALUE as an int >= 1, or the scripts' one-line error naming OPTION."""
    if not value.isascii() or not value.isdigit() or int(value) == 0:
        raise PipelineError(f"{option} must be a positive whole number, got '{value}'")
    return int(value)


def visible_cores(environ: Mapping[str, str] = os.environ) -> int:
    """The cores this process may use, counted as coreutils' nproc counts them (the scripts used it):
    the CPU affinity, replaced by OMP_NUM_THREADS and capped by OMP_THREAD_LIMIT when they are set."""
    cores = len(os.sched_getaffinity(0))
    threads = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if threads.isdigit() and int(threads) > 0:
        cores = int(threads)
    limit = environ.get("OMP_THREAD_LIMIT", "").strip()
    if limit.isdigit() and int(limit) > 0:
        cores = min(cores, int(limit))
    return cores


def shell_assignments(settings: Mapping[str, object]) -> str:
    """NAME='value' lines a POSIX shell can eval: every value one quoted word, whatever it holds."""
    lines = []
    for name, value in settings.items():
        if isinstance(value, bool):
            value = int(value)
        lines.append(f"{name}={shlex.quote('' if value is None else str(value))}")
    return "\n".join(lines)
