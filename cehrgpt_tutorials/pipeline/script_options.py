"""How the step scripts (scripts/*.sh) hand their command line to Python and get the decisions back.

A script runs `python -m cehrgpt_tutorials.pipeline.<step>_options ... "$0" "$@"`, which parses and
checks the options and prints shell code for the script to eval: one `NAME='value'` line per setting
(quoted with shlex, so spaces, globs and empty strings survive), or for --help the usage and `exit 0`.
A bad command line is one `error:` line on stderr and exit status 1, before anything runs.

    answer=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.training_options plan "$0" "$@") || exit_as_ours $?
    eval "$answer"
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail

HELP_OPTIONS = ("-h", "--help")


@dataclass
class CommandLine:
    """A script's words sorted out: its options' values (the last one wins), its flags, the rest."""

    values: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    passed_through: list[str] = field(default_factory=list)  # for the program the script runs, as typed
    help: bool = False


def parse_options(words: list[str], value_options: dict[str, str], flags: Iterable[str] = (),
                  pass_through: bool = True) -> CommandLine:
    """Sort a script's words, left to right, the way its `case` loop always did.

    value_options: option -> what its "needs a value" error adds (' (see --help)'); each takes the next
    word, whatever it is, or `--option=value`. flags: options without a value. pass_through: every
    other word goes to the program the script runs; without it, an unknown `--option` (which takes a
    value) or any other word is an error. -h or --help stops the parsing: the usage is wanted.
    """
    flags = set(flags)
    line = CommandLine()
    position = 0
    while position < len(words):
        word = words[position]
        position += 1
        if word in HELP_OPTIONS:
            line.help = True
            return line
        if word in flags:
            line.flags.add(word)
            continue
        name, equals, inline = word.partition("=")
        if name not in value_options and (pass_through or not word.startswith("--")):
            if not pass_through:
                raise PipelineError(f"unexpected argument '{word}' (see --help)")
            line.passed_through.append(word)
            continue
        if equals and name.startswith("--"):
            value = inline
        elif position < len(words):
            name, value = word, words[position]
            position += 1
        else:
            raise PipelineError(f"{word} needs a value{value_options.get(word, ' (see --help)')}")
        if name not in value_options:
            raise PipelineError(f"unknown option '{name}' (see --help)")
        line.values[name] = value
    return line


def positive_whole_number(option: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]+", value) or int(value) == 0:
        raise PipelineError(f"{option} must be a positive whole number, got '{value}'")
    return int(value)


def one_of(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise PipelineError(f"{option} must be {listed}, got '{value}'")
    return value


def require_use_tf_off() -> None:
    """transformers imports TensorFlow's Keras 3 and fails unless USE_TF=0 (setup_env.sh sets it)."""
    if os.environ.get("USE_TF") != "0":
        raise PipelineError("USE_TF is not 0, so transformers would import TensorFlow's Keras 3 and fail: "
                            "run 'source setup_env.sh'")


def available_cores() -> int:
    """What `nproc` answers: OMP_NUM_THREADS when set, else the CPUs this process may run on, at most
    OMP_THREAD_LIMIT (GNU nproc's rule, which the scripts used before they asked Python)."""
    def omp(name: str) -> int | None:
        first = os.environ.get(name, "").split(",")[0].strip()
        return int(first) if first.isdigit() and int(first) > 0 else None

    limit = omp("OMP_THREAD_LIMIT")
    cores = omp("OMP_NUM_THREADS") or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1)
    return min(cores, limit) if limit else cores


def shell_words(words: Iterable[str]) -> str:
    """Words as one shell string: `eval "set -- \\"\\$@\\" $WORDS"` appends them as they were."""
    return " ".join(shlex.quote(str(word)) for word in words)


def shell_answer(settings: dict[str, object], exports: dict[str, object] | None = None) -> str:
    """Shell code that sets each setting (and exports each export) to its value, quoted."""
    lines = [f"{name}={shlex.quote(str(value))}" for name, value in settings.items()]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in (exports or {}).items()]
    return "\n".join(lines)


def shell_help(usage: str) -> str:
    """Shell code that prints the usage and ends the script with status 0."""
    return f"printf '%s\\n' {shlex.quote(usage.rstrip())}\nexit 0"


def answer_for_script(answers: dict[str, Callable[[list[str]], str]], argv: list[str] | None = None) -> None:
    """A module's command line: `ACTION ARGUMENTS...`; prints the chosen answer's shell code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in answers:
        fail(f"the first argument must be one of {', '.join(answers)}, got {argv[:1]}")
    try:
        print(answers[argv[0]](argv[1:]))
    except PipelineError as error:
        fail(str(error))
    except OSError as error:
        fail(describe_os_error(error))
