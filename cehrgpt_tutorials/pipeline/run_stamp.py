"""Step 4's "same run?" question: may a re-run resume the training in the model folder?

The runner resumes from the model folder's last checkpoint and reuses its tokenizer and tokenized
dataset. That is only right when the data and the arguments are the ones that checkpoint came from,
so train_cehrgpt.sh keeps a stamp of both beside the checkpoints (training_inputs.txt): one line per
runner argument and one per training file (its checksum, not its time):

    # train_cehrgpt.sh training inputs, format 2
    arg --hidden_size
    arg 48
    data 3617226410 52183 ./part-00000.parquet

The interpreter and the launcher (torchrun) are left out, and so are the data loader and tokenization
worker settings: they do not change the model, and the worker count follows the machine's cores.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError

STAMP_NAME = "training_inputs.txt"
STAMP_FORMAT = "# train_cehrgpt.sh training inputs, format 2"
RUNNER_MODULE = "cehrgpt.runners.hf_cehrgpt_pretrain_runner"
MACHINE_OPTIONS = re.compile(r"^(--dataloader_[^=]*|--preprocessing_num_workers)(=|$)")  # left out of the stamp
SAFE_WORD = re.compile(r"^[A-Za-z0-9_./:=@%+,-]+$")
CKSUM_BATCH = 1000  # files per cksum call, well under the kernel's limit on a command line


def shell_quote(word: str) -> str:
    """The word as one shell word, quoted only when it needs it (shell_helpers.sh's rule)."""
    return word if SAFE_WORD.match(word) else "'" + word.replace("'", "'\\''") + "'"


def stamped_arguments(command: list[str]) -> list[str]:
    """The runner arguments of a training command that decide the model, in order."""
    if RUNNER_MODULE not in command:
        raise PipelineError(f"the training command does not run {RUNNER_MODULE}")
    kept, skip_value = [], False
    for word in command[command.index(RUNNER_MODULE) + 1:]:
        if skip_value:
            skip_value = False
            continue
        machine = MACHINE_OPTIONS.match(word)
        if machine:
            skip_value = machine.group(2) == ""  # `--name value`: its value goes too
            continue
        kept.append(word)
    return kept


def regular_parquet_files(data_folder: Path) -> list[str]:
    """'./relative/path.parquet' of every regular Parquet file under the folder, sorted.

    Symbolic links are not followed (`find -type f`'s rule): the stamp describes the files themselves.
    """
    found = []
    for folder, _, files in os.walk(data_folder):
        relative = os.path.relpath(folder, data_folder)
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".parquet") and os.path.isfile(path) and not os.path.islink(path):
                found.append(f"./{name}" if relative == "." else f"./{relative}/{name}")
    return sorted(found)


def data_checksums(data_folder: Path) -> dict[str, str]:
    """'./relative/path.parquet' -> 'CRC SIZE' (POSIX cksum) of every regular Parquet file under the folder."""
    names = regular_parquet_files(data_folder)
    checksums = {}
    for start in range(0, len(names), CKSUM_BATCH):
        try:
            result = subprocess.run(["cksum", *names[start:start + CKSUM_BATCH]], cwd=data_folder,
                                    capture_output=True, text=True, check=False)
        except OSError as error:
            raise PipelineError(f"cannot checksum the training data in {data_folder} ({error})") from error
        if result.returncode != 0:
            why = " ".join(result.stderr.split()) or f"cksum exited {result.returncode}"
            raise PipelineError(f"cannot checksum the training data in {data_folder} ({why})")
        for line in result.stdout.splitlines():
            crc, size, name = line.split(" ", 2)
            checksums[name] = f"{crc} {size}"
    return checksums


@dataclass(frozen=True)
class RunStamp:
    """What a training run was started with: the stamp file's format line, runner arguments, data files."""

    format: str
    arguments: list[str] = field(default_factory=list)  # each as shell_quote wrote it
    data: dict[str, str] = field(default_factory=dict)  # './path' -> 'CRC SIZE'

    def text(self) -> str:
        lines = [self.format, *(f"arg {word}" for word in self.arguments),
                 *(f"data {self.data[name]} {name}" for name in sorted(self.data))]
        return "\n".join(lines) + "\n"


def stamp_of(command: list[str], data_folder: Path) -> RunStamp:
    """The stamp of a training command about to run on the files in data_folder."""
    return RunStamp(STAMP_FORMAT, [shell_quote(word) for word in stamped_arguments(command)],
                    data_checksums(data_folder))


def parse_stamp(text: str) -> RunStamp:
    """A stamp file's contents (the data lines in any order)."""
    lines = text.splitlines()
    arguments = [line[len("arg "):] for line in lines if line.startswith("arg ")]
    data = {}
    for line in lines:
        if line.startswith("data "):
            crc, size, name = line[len("data "):].split(" ", 2)
            data[name] = f"{crc} {size}"
    return RunStamp(lines[0] if lines else "", arguments, data)


def option_values(arguments: list[str]) -> dict[str, str]:
    """Each option's last value ('--name value' or '--name=value'; '(set)' for a flag), in order of appearance."""
    values: dict[str, str] = {}
    pending = None
    for word in arguments:
        if word.startswith("--"):
            if pending is not None:
                values[pending] = "(set)"
            name, equals, value = word.partition("=")
            pending = None if equals else word
            if equals:
                values[name] = value
        elif pending is not None:
            values[pending] = word
            pending = None
    if pending is not None:
        values[pending] = "(set)"
    return values


def stamp_changes(old: RunStamp, new: RunStamp) -> str:
    """What differs between two stamps, in one line ('' when they are the same run).

    '--num_train_epochs 10 -> 12; the data: 2 files changed, 0 new, 0 gone'; an argument moved or
    repeated without changing any option's value is 'changed': still not the same command.
    """
    if old == new:
        return ""
    if old.format != new.format:
        return "recorded by an older train_cehrgpt.sh, in a form this one cannot compare"
    before, after = option_values(old.arguments), option_values(new.arguments)
    changes = []
    for name in [*after, *(name for name in before if name not in after)]:
        if name not in before:
            changes.append(f"{name} {after[name]} (new)")
        elif name not in after:
            changes.append(f"{name} {before[name]} (gone)")
        elif before[name] != after[name]:
            changes.append(f"{name} {before[name]} -> {after[name]}")
    changed = sum(1 for name in new.data if name in old.data and old.data[name] != new.data[name])
    added = sum(1 for name in new.data if name not in old.data)
    removed = sum(1 for name in old.data if name not in new.data)
    if changed + added + removed:
        changes.append(f"the data: {changed} files changed, {added} new, {removed} gone")
    return "; ".join(changes) or "changed"
