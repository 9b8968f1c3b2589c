"""Step 2's decisions (create_cehrgpt_pretraining_data.sh): its command line, the checks before Spark
starts, the Spark settings sized to the input, where the held-out split comes from, and the folder of
links the second app reads. The script evaluates what `plan` prints and keeps only the glue.

    python -m cehrgpt_tutorials.pipeline.step2_settings plan SCRIPT [ARGUMENT...]   shell assignments
    python -m cehrgpt_tutorials.pipeline.step2_settings usage SCRIPT               the script's --help
    python -m cehrgpt_tutorials.pipeline.step2_settings stage INPUT OUTPUT STAGING --split SOURCE

Standard library only (see shell_settings.py): the script runs it with PYSPARK_PYTHON.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.environment import (
    java_version,
    outside_tutorial_block,
    spark_runs_on_java,
)
from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.pipeline.shell_settings import (
    CommandLine,
    positive_whole_number,
    shell_assignments,
    visible_cores,
)
from cehrgpt_tutorials.sequences.split import DEFAULT_TEST_FRACTION, PATIENT_SPLITS_FOLDER, SPLIT_MARKER

DOMAIN_TABLES = ("condition_occurrence", "procedure_occurrence", "drug_exposure")
REQUIRED_TABLES = ("person", "visit_occurrence", "concept", *DOMAIN_TABLES)
# Read by the apps when present (the drug roll-up; death adds --include_death): linked if present.
OPTIONAL_TABLES = ("concept_ancestor", "concept_relationship", "death")

# One shuffle partition (one patient_sequence part file) per this much input: part files stay near
# 128 MB (the sequences are about a quarter of the tables' size), so cleanup and tokenization hold
# one file at a time without GBs of memory; at least 2 x cores so every core works.
INPUT_MB_PER_PARTITION = 512
# The JVM's optimizing compiler (C2) costs a short run more CPU than it gains: up to this much input
# the quick compiler (C1) alone is faster, above it C1 is slower (bench/RESULTS.md, step 2's JIT runs).
QUICK_JIT_MAX_TABLES_MB = 16
QUICK_JIT_OPTIONS = "--driver-java-options -XX:TieredStopAtLevel=1"

COMMAND_LINE = CommandLine(
    valued={f"--{name}": name for name in ("input_folder", "output_folder", "start_date", "min_num_of_patients",
                                            "test_fraction", "shuffle_partitions")},
    flags={"-h": "help", "--help": "help", "--dry_run": "dry_run"},
    stray_word="unexpected argument '{word}' (see --help)",
)

USAGE = """\
Usage: {script} --input_folder INPUT_FOLDER --output_folder OUTPUT_FOLDER --start_date YYYY-MM-DD
          [--min_num_of_patients N] [--test_fraction F] [--shuffle_partitions N] [--dry_run]

Builds CEHR-GPT patient sequences from OMOP Parquet tables with cehrbert_data's Spark apps.

  --input_folder PATH         OMOP tables, one Parquet folder per table (read only)
  --output_folder PATH        where qualified_concept_list/ and patient_sequence/ are written
  --start_date DATE           keep events on or after this date (YYYY-MM-DD), e.g. 1985-01-01
  --min_num_of_patients N     keep concepts seen in at least N patients (default: the official 100 at
                              1,000,000 persons and above, proportionally fewer below, never under 11;
                              concepts held by fewer than min(11, N) training persons in the sequences
                              are removed too)
  --test_fraction F           share of persons held out as patient_sequence/test, decided per person_id
                              by cehrgpt_tutorials.sequences.split.is_test_person (default {test_fraction}); 0: no split.
                              An INPUT_FOLDER/patient_splits of your own is used as it is.
  --shuffle_partitions N      Spark's shuffle partitions, i.e. patient_sequence part files (default:
                              one per {mb_per_partition} MB of input tables, 2 x cores at least)
  --dry_run                   check the input, print the Spark settings it would use, write nothing
  -h, --help                  show this help

Run 'source setup_env.sh' first: it puts spark-submit on PATH, selects Java 11 and sets
SPARK_SUBMIT_OPTIONS (master, driver and executor memory) for this machine.

Example:
  {script} --input_folder "$OMOP_DIR" --output_folder "$CEHR_GPT_DATA_DIR" --start_date 1985-01-01"""


def usage(script: str) -> str:
    return USAGE.format(script=script, test_fraction=DEFAULT_TEST_FRACTION, mb_per_partition=INPUT_MB_PER_PARTITION)


@dataclass
class Step2Options:
    """The script's command line, checked (numbers stay the strings given: they reach the apps as words)."""

    input_folder: str
    output_folder: str
    start_date: str
    min_num_of_patients: str = ""  # empty: sequences/concept_floor.py sizes it to the persons
    test_fraction: str = ""  # empty: sequences/split.py's DEFAULT_TEST_FRACTION; "0": no split
    shuffle_partitions: str = ""  # empty: sized to the input (shuffle_partitions below)
    dry_run: bool = False


def parse_options(arguments: list[str]) -> Step2Options | None:
    """The checked options, or None when --help was asked for."""
    given = COMMAND_LINE.parse(arguments)
    if given.pop("help", False):
        return None
    for name in ("input_folder", "output_folder", "start_date"):
        if not given.get(name):
            raise PipelineError(f"--{name} is required (see --help)")
    options = Step2Options(**given)
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", options.start_date):
        raise PipelineError(f"--start_date must look like YYYY-MM-DD, got '{options.start_date}'")
    if options.min_num_of_patients and not re.fullmatch(r"[0-9]+", options.min_num_of_patients):
        raise PipelineError(f"--min_num_of_patients must be a whole number, got '{options.min_num_of_patients}'")
    if options.test_fraction and not re.fullmatch(r"0|0?\.[0-9]+", options.test_fraction):
        raise PipelineError("--test_fraction must be 0 (no split) or a number between 0 and 1 such as 0.15, "
                            f"got '{options.test_fraction}'")
    if options.shuffle_partitions:
        positive_whole_number("--shuffle_partitions", options.shuffle_partitions)
    return options


def check_input_folder(folder: str) -> Path:
    """The input folder as a physical path, once it holds every table the apps need."""
    if not Path(folder).is_dir():
        raise PipelineError(f"input folder '{folder}' does not exist (run step 1, export_omop.py)")
    resolved = Path(folder).resolve()
    missing = [table for table in REQUIRED_TABLES if not (resolved / table).is_dir()]
    if missing:
        raise PipelineError(f"input folder {resolved} lacks the table folder(s): {' '.join(missing)} "
                            "(one Parquet folder per OMOP table, as export_omop.py writes them)")
    return resolved


def check_java(environ: Mapping[str, str]) -> tuple[str, str]:
    """(the java program Spark will use, its version), or an error naming what to do."""
    java = f"{environ['JAVA_HOME']}/bin/java" if environ.get("JAVA_HOME") else shutil.which("java") or ""
    if not java or not os.access(java, os.X_OK):
        raise PipelineError(f"no Java found (JAVA_HOME='{environ.get('JAVA_HOME', '')}'): "
                            "run 'source setup_env.sh', which selects Java 11")
    version = java_version(java)
    if not spark_runs_on_java(version):
        raise PipelineError(f"Spark 3.1.2 needs Java 8 or 11, but {java} is Java '{version or 'unknown'}': "
                            "run 'source setup_env.sh'")
    return java, version


def tables_megabytes(input_folder: Path, tables: Iterable[str] = REQUIRED_TABLES + OPTIONAL_TABLES) -> int:
    """Whole megabytes of the files in the tables the apps read (links followed, as Spark follows them)."""
    total = 0
    for table in tables:
        for root, _folders, files in os.walk(input_folder / table, followlinks=True):
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    total += os.stat(path).st_size
    return total // (1024 * 1024)


def spark_defaults_path(environ: Mapping[str, str]) -> Path:
    """spark-defaults.conf as spark-submit finds it: in SPARK_CONF_DIR, else SPARK_HOME/conf."""
    conf_dir = environ.get("SPARK_CONF_DIR") or f"{environ.get('SPARK_HOME') or '/nonexistent'}/conf"
    return Path(conf_dir) / "spark-defaults.conf"


def read_spark_defaults(path: Path) -> list[str]:
    """The file's lines; none when there is no such file (Spark then has no defaults either)."""
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def sets(lines: list[str], setting: str) -> bool:
    return any(re.match(rf"\s*{re.escape(setting)}", line) for line in lines)


def spark_cores(spark_options: str, environ: Mapping[str, str]) -> int:
    """The N of the last --master local[N] (or local[N,F]) in the options, else the visible cores."""
    found = re.findall(r"local\[([0-9]+)[],]", spark_options)
    return int(found[-1]) if found else visible_cores(environ)


def user_java_options(spark_options: str, defaults: list[str]) -> bool:
    """Whether the user sets the driver's Java options, which then win over ours."""
    return ("driver-java-options" in spark_options or "extraJavaOptions" in spark_options
            or sets(defaults, "spark.driver.extraJavaOptions"))


def user_partitions(spark_options: str, defaults: list[str], defaults_path: Path) -> str:
    """Where the user set spark.sql.shuffle.partitions themselves, or ""."""
    if "spark.sql.shuffle.partitions" in spark_options:
        return "set in SPARK_SUBMIT_OPTIONS"
    if sets(outside_tutorial_block(defaults), "spark.sql.shuffle.partitions"):
        return f"set in {defaults_path}"
    return ""


def shuffle_partitions(asked: str, users_setting: str, tables_mb: int, cores: int) -> tuple[str, str]:
    """(the partitions to pass, "" to leave Spark's; the line that says why). --shuffle_partitions
    wins, then the user's own setting, else one per INPUT_MB_PER_PARTITION, 2 x cores at least."""
    if asked:
        return asked, f"{asked} (--shuffle_partitions)"
    if users_setting:
        return "", f"yours ({users_setting})"
    partitions = max(-(-tables_mb // INPUT_MB_PER_PARTITION), 2 * cores)
    return str(partitions), f"{partitions} ({tables_mb} MB of input tables, {cores} cores)"


def quick_jit(tables_mb: int, users_java_options: bool) -> bool:
    """The quick compiler alone: only on small input, and never over the user's own Java options."""
    return tables_mb <= QUICK_JIT_MAX_TABLES_MB and not users_java_options


def tuning_options(use_quick_jit: bool, partitions: str) -> str:
    """Our spark-submit options, placed before SPARK_SUBMIT_OPTIONS so the user's win."""
    words = [QUICK_JIT_OPTIONS] if use_quick_jit else []
    if partitions:
        words.append(f"--conf spark.sql.shuffle.partitions={partitions}")
    return " ".join(words)


@dataclass
class SplitPlan:
    """Where app 2's patient_splits comes from: "yours" (the input's own), "ours" (written into the
    output folder now) or "none"; `folder` is what app 2 reads ("" for none)."""

    source: str
    folder: str
    note: str


def plan_split(input_folder: Path, output_folder: Path, test_fraction: str) -> SplitPlan:
    """An input patient_splits without our marker is the user's: it decides the split, whatever
    --test_fraction says (0 would contradict it); otherwise --test_fraction 0 means no split."""
    yours = input_folder / PATIENT_SPLITS_FOLDER
    if yours.is_dir() and not (yours / SPLIT_MARKER).is_file():
        if test_fraction == "0":
            raise PipelineError(f"--test_fraction 0, but {yours} (yours) would still split the patients: "
                                "remove it or pass another --input_folder")
        if test_fraction:
            print(f"warning: --test_fraction {test_fraction} is ignored: {yours} (yours) decides the split",
                  file=sys.stderr)
        return SplitPlan("yours", str(yours), f"{yours} (your own)")
    if test_fraction == "0":
        return SplitPlan("none", "", "none (--test_fraction 0): one patient_sequence folder")
    ours = output_folder / PATIENT_SPLITS_FOLDER
    return SplitPlan("ours", str(ours), f"{ours} (patient_sequence/train and /test)")


def shell_word(text: str) -> str:
    """TEXT single-quoted, always, so a printed command can be pasted whatever the folder's name."""
    return "'" + text.replace("'", "'\\''") + "'"


def plan(arguments: list[str], environ: Mapping[str, str]) -> dict[str, object]:
    """Every setting the script runs with, or a PipelineError before anything is written."""
    options = parse_options(arguments)
    if options is None:
        return {"SHOW_HELP": True}
    input_folder = check_input_folder(options.input_folder)
    if not shutil.which("spark-submit", path=environ.get("PATH")):
        raise PipelineError("spark-submit is not on PATH: run 'source setup_env.sh' first")
    java, java_version = check_java(environ)
    spark_options = environ.get("SPARK_SUBMIT_OPTIONS", "")
    if not spark_options:
        print("warning: SPARK_SUBMIT_OPTIONS is empty, Spark uses its defaults (source setup_env.sh to size it)",
              file=sys.stderr)
    defaults_path = spark_defaults_path(environ)
    defaults = read_spark_defaults(defaults_path)
    tables_mb = tables_megabytes(input_folder)
    cores = spark_cores(spark_options, environ)
    partitions, partitions_note = shuffle_partitions(
        options.shuffle_partitions, user_partitions(spark_options, defaults, defaults_path), tables_mb, cores)
    tuning = tuning_options(quick_jit(tables_mb, user_java_options(spark_options, defaults)), partitions)
    # The physical path mkdir -p then cd would give, so nothing is created before the dry run's exit.
    output_folder = Path(os.path.realpath(options.output_folder))
    split = plan_split(input_folder, output_folder, options.test_fraction)
    return {
        "SHOW_HELP": False, "DRY_RUN": options.dry_run, "INPUT_FOLDER": input_folder, "OUTPUT_FOLDER": output_folder,
        "START_DATE": options.start_date, "MIN_NUM_OF_PATIENTS": options.min_num_of_patients,
        "TEST_FRACTION": options.test_fraction, "DOMAIN_TABLES": " ".join(DOMAIN_TABLES),
        "TUNING_OPTIONS": tuning, "SPARK_OPTIONS": spark_options,
        "SPARK_OPTIONS_NOTE": " ".join(word for word in (tuning, spark_options or "(none)") if word),
        "PARTITIONS_NOTE": partitions_note, "JAVA_NOTE": f"{java} ({java_version})",
        "SPLIT_SOURCE": split.source, "SPLITS": split.folder, "SPLIT_NOTE": split.note,
        "DEATH_OPTION": "--include_death" if (input_folder / "death").is_dir() else "",
        **written_folders(output_folder, split_sequences=bool(split.folder)),
    }


def written_folders(output_folder: Path, split_sequences: bool) -> dict[str, str]:
    """What app 2 must write (train/ and test/ with a split), as folders and as the lines that name them."""
    sequences = output_folder / "patient_sequence"
    return {
        "SEQUENCE_FOLDERS": "patient_sequence/train patient_sequence/test" if split_sequences else "patient_sequence",
        "SEQUENCE_FOLDERS_NOTE": "patient_sequence/train and /test" if split_sequences else "patient_sequence",
        "WRITTEN_NOTE": f"{sequences}/train and {sequences}/test" if split_sequences else str(sequences),
        "NEXT_STEP": f"python cleanup_tokens.py --patient-sequence-dir {shell_word(str(sequences))}",
    }


def stage(input_folder: Path, output_folder: Path, staging: Path, split_source: str) -> None:
    """Prepare what app 2 reads, after the script holds the output's lock: staging/spark_input, one link
    per input table plus the split and the concept list app 1 writes into staging (relative, so it
    still points to it once staging replaces the outputs). With no split, our split from an earlier run
    in this output folder goes (same folder in and out: app 2 would read it)."""
    ours = output_folder / PATIENT_SPLITS_FOLDER
    if split_source == "none" and (ours / SPLIT_MARKER).is_file():
        try:
            shutil.rmtree(ours)
        except OSError as error:
            raise PipelineError(f"cannot remove the earlier split {ours}: {error.strerror}") from None
    links = {table: input_folder / table for table in REQUIRED_TABLES + OPTIONAL_TABLES
             if (input_folder / table).is_dir()}
    if split_source != "none":
        links[PATIENT_SPLITS_FOLDER] = input_folder / PATIENT_SPLITS_FOLDER if split_source == "yours" else ours
    links["qualified_concept_list"] = Path("..", "qualified_concept_list")
    spark_input = staging / "spark_input"
    try:
        spark_input.mkdir()
        for name, target in links.items():
            (spark_input / name).symlink_to(target)
    except OSError as error:
        raise PipelineError(f"cannot link the input tables into {spark_input}: {error}") from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="SCRIPT ARGUMENT...: check them and the input; print shell assignments")
    commands.add_parser("usage", help="print the script's --help").add_argument("script")
    stage_command = commands.add_parser("stage", help="the links app 2 reads (after the output's lock)")
    for name in ("input_folder", "output_folder", "staging"):
        stage_command.add_argument(name, type=Path)
    stage_command.add_argument("--split", choices=("yours", "ours", "none"), required=True)
    try:
        if argv[:1] == ["plan"] and len(argv) > 1:  # the script's own words, whatever they are, parsed by plan()
            if len(argv) == 2:
                print(usage(argv[1]), file=sys.stderr)
                raise SystemExit(2)
            print(shell_assignments(plan(argv[2:], os.environ)))
            return
        arguments = parser.parse_args(argv)
        if arguments.command == "usage":
            print(usage(arguments.script))
        elif arguments.command == "stage":
            stage(arguments.input_folder, arguments.output_folder, arguments.staging, arguments.split)
        else:
            parser.error("plan needs the script's name")
    except PipelineError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
