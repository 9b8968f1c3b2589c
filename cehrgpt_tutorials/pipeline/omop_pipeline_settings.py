"""omop_pipeline.sh's decisions (step 5b, generated sequences -> OMOP tables): its command line, the
checks before anything is deleted or started, and the folders and tables it works on. The script
evaluates what `plan` prints and keeps the glue: the lock, the staging folder, the official commands.

    python -m cehrgpt_tutorials.pipeline.omop_pipeline_settings plan SCRIPT [ARGUMENT...]
    python -m cehrgpt_tutorials.pipeline.omop_pipeline_settings usage SCRIPT
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.pipeline.shell_settings import (
    CommandLine,
    positive_whole_number,
    shell_assignments,
    visible_cores,
)

BUFFER_SIZE = 1280  # the official script's
DOMAIN_TABLES = ("condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement")
CONVERTED_TABLES = ("person", "visit_occurrence", "condition_occurrence", "procedure_occurrence", "drug_exposure",
                    "death", "measurement")
# concept is required (the converter looks up each concept's domain); the others are copied so the
# restored CDM is complete when the source has them.
VOCABULARY_TABLES = ("concept", "concept_ancestor", "concept_relationship", "vocabulary", "domain", "concept_class",
                     "relationship", "concept_synonym", "drug_strength")
NOTHING_CONVERTED_EXIT_CODE = 3

COMMAND_LINE = CommandLine(
    valued={spelling: name for name, short in (("patient-sequence-folder", "-p"), ("omop-folder", "-o"),
                                               ("source-omop-folder", "-s"), ("buffer-size", "-b"),
                                               ("cpu-cores", "-c"), ("domain-tables", "-d"))
            for spelling in (short, f"--{name}")},
    flags={"-h": "help", "--help": "help"},
)

USAGE = """\
Usage: {script} -p PATIENT_SEQUENCE_FOLDER -o OMOP_FOLDER -s SOURCE_OMOP_FOLDER [-b N] [-c N] [-d "TABLES"]

Converts generated patient sequences into OMOP CDM tables and rebuilds observation_period and
condition_era.

  -p, --patient-sequence-folder PATH   generated sequences (*.parquet)
  -o, --omop-folder PATH               output folder for the OMOP tables
  -s, --source-omop-folder PATH        OMOP folder with the vocabulary (concept, ...) to copy
  -b, --buffer-size N                  sequences the converter holds before writing (default {buffer_size})
  -c, --cpu-cores N                    converter processes (default: this machine's {cores} cores)
  -d, --domain-tables "LIST"           tables observation_period is built from
                                       (default "{domain_tables}")
  -h, --help                           show this help
Options also take the --name=value form. Exit status: 0 done, 1 bad input or a failed step,
{nothing_converted} no sequence could be converted."""


def usage(script: str, environ: Mapping[str, str] = os.environ) -> str:
    return USAGE.format(script=script, buffer_size=BUFFER_SIZE, cores=visible_cores(environ),
                        domain_tables=" ".join(DOMAIN_TABLES), nothing_converted=NOTHING_CONVERTED_EXIT_CODE)


def physical_folder(folder: str) -> Path:
    """FOLDER as an absolute path without links, once it is a folder one can enter."""
    if not (os.path.isdir(folder) and os.access(folder, os.X_OK)):
        raise PipelineError(f"cannot enter folder '{folder}'")
    return Path(folder).resolve()


def has_parquet_files(folder: str) -> bool:
    """Whether the folder holds a visible file whose name ends in parquet (the generator's output)."""
    try:
        names = os.listdir(folder)
    except OSError:  # unreadable: no file the converter could read either
        return False
    return any(name.endswith("parquet") and not name.startswith(".") for name in names)


def plan(arguments: list[str], environ: Mapping[str, str]) -> dict[str, object]:
    """Every setting the script runs with, or a PipelineError before anything is deleted or started."""
    given = COMMAND_LINE.parse(arguments)
    if given.get("help"):
        return {"SHOW_HELP": True}
    for name in ("patient-sequence-folder", "omop-folder", "source-omop-folder"):
        if not given.get(name):
            raise PipelineError(f"--{name} is required (see --help)")
    buffer_size = positive_whole_number("--buffer-size", str(given.get("buffer-size", BUFFER_SIZE)))
    cpu_cores = positive_whole_number("--cpu-cores", str(given.get("cpu-cores", visible_cores(environ))))
    sequences, omop, source = given["patient-sequence-folder"], given["omop-folder"], given["source-omop-folder"]
    if not Path(sequences).is_dir():
        raise PipelineError(f"patient sequence folder '{sequences}' does not exist (run generate_synthetic.sh first)")
    if not has_parquet_files(sequences):
        raise PipelineError(f"'{sequences}' has no Parquet files (expected the generator's generated_sequences folder)")
    if not Path(source, "concept").is_dir():
        raise PipelineError(f"source OMOP folder '{source}' has no concept/ table "
                            "(the converter needs it to find each concept's domain)")
    domain_tables = str(given.get("domain-tables", " ".join(DOMAIN_TABLES))).split()
    for table in domain_tables:
        if table not in CONVERTED_TABLES:
            raise PipelineError(f"--domain-tables: '{table}' is not a table the converter writes "
                                f"({' '.join(CONVERTED_TABLES)})")
    sequences, source = physical_folder(sequences), physical_folder(source)
    parent, name = os.path.split(omop.rstrip("/") or "/")  # as dirname and basename split it
    try:
        os.makedirs(parent or ".", exist_ok=True)
    except OSError:
        raise PipelineError(f"cannot create the folder of '{omop}'") from None
    omop = physical_folder(parent or ".") / name
    if omop == source:
        raise PipelineError("--omop-folder must differ from --source-omop-folder: its tables are deleted and rewritten")
    return {
        "SHOW_HELP": False, "PATIENT_SEQUENCE_FOLDER": sequences, "OMOP_FOLDER": omop, "SOURCE_OMOP_FOLDER": source,
        "BUFFER_SIZE": buffer_size, "CPU_CORES": cpu_cores, "DOMAIN_TABLES": " ".join(domain_tables),
        "CONVERTED_TABLES": " ".join(CONVERTED_TABLES),
        "VOCABULARY_TABLES": " ".join(table for table in VOCABULARY_TABLES if (source / table).is_dir()),
        "NOTHING_CONVERTED_EXIT_CODE": NOTHING_CONVERTED_EXIT_CODE,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["plan"] and len(argv) >= 2:  # the script's own words follow, whatever they are
            print(shell_assignments(plan(argv[2:], os.environ)))
        elif argv[:1] == ["usage"] and len(argv) == 2:
            print(usage(argv[1]))
        else:
            fail("usage: python -m cehrgpt_tutorials.pipeline.omop_pipeline_settings plan SCRIPT [ARGUMENT...] "
                 "| usage SCRIPT", exit_code=2)
    except PipelineError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
