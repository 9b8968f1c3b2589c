"""What the step scripts (scripts/*.sh) ask Python: their command line, parsed and checked, and the
settings they run with, handed back as shell code for the script to `eval`: one `NAME='value'` line per
setting (quoted with shlex, so spaces, globs and empty strings survive), or for --help the usage and
`exit 0`. A bad command line is one `error:` line on stderr and exit status 1, before anything runs.

    answer=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.training_options plan "$0" "$@") || exit_as_ours $?
    eval "$answer"

Two parsers, for the scripts' two kinds of command line: `CommandLine` for scripts whose every word is
one of their options (step 2, omop_pipeline.sh), `parse_options` for scripts that pass the other words
on to the program they run (steps 4 and 5). Standard library only: step 2 runs this with
PYSPARK_PYTHON, which may lack the project's packages.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cehrgpt_tutorials.environment import usable_cores
from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail

HELP_OPTIONS = ("-h", "--help")


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


@dataclass
class ScriptWords:
    """A script's words sorted out: its options' values (the last one wins), its flags, the rest."""

    values: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    passed_through: list[str] = field(default_factory=list)  # for the program the script runs, as typed
    help: bool = False


def parse_options(words: list[str], value_options: dict[str, str], flags: Iterable[str] = (),
                  pass_through: bool = True) -> ScriptWords:
    """Sort a script's words, left to right, the way its `case` loop always did.

    value_options: option -> what its "needs a value" error adds (' (see --help)'); each takes the next
    word, whatever it is, or `--option=value`. flags: options without a value. pass_through: every
    other word goes to the program the script runs; without it, an unknown `--option` (which takes a
    value) or any other word is an error. -h or --help stops the parsing: the usage is wanted.
    """
    flags = set(flags)
    line = ScriptWords()
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


def shell_words(words: Iterable[str]) -> str:
    """Words as one shell string: `eval "set -- \\"\\$@\\" $WORDS"` appends them as they were."""
    return " ".join(shlex.quote(str(word)) for word in words)


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


def positive_whole_number(option: str, value: str) -> int:
    """VALUE as an int >= 1, or the scripts' one-line error naming OPTION."""
    if not value.isascii() or not value.isdigit() or int(value) == 0:
        raise PipelineError(f"{option} must be a positive whole number, got '{value}'")
    return int(value)


def visible_cores(environ: Mapping[str, str] = os.environ) -> int:
    """The cores this process may use, counted as coreutils' nproc counts them (the scripts used it):
    the CPU affinity, replaced by OMP_NUM_THREADS and capped by OMP_THREAD_LIMIT when they are set."""
    cores = usable_cores()
    threads = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if threads.isdigit() and int(threads) > 0:
        cores = int(threads)
    limit = environ.get("OMP_THREAD_LIMIT", "").strip()
    if limit.isdigit() and int(limit) > 0:
        cores = min(cores, int(limit))
    return cores


def shell_assignments(settings: Mapping[str, object], exports: Mapping[str, object] | None = None) -> str:
    """NAME='value' lines a POSIX shell can eval (`export NAME=...` for `exports`): every value one quoted
    word, whatever it holds; True/False become 1/0 and None the empty string."""
    def word(value: object) -> str:
        return shlex.quote("" if value is None else str(int(value) if isinstance(value, bool) else value))

    lines = [f"{name}={word(value)}" for name, value in settings.items()]
    lines += [f"export {name}={word(value)}" for name, value in (exports or {}).items()]
    return "\n".join(lines)
