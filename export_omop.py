"""Step 1: export OMOP CDM tables from PostgreSQL to Spark-readable Parquet.

Reads:  the tables of one schema (default `cdm`): person, visit_occurrence, condition_occurrence,
        drug_exposure, procedure_occurrence, concept, ... (death and measurement when they exist).
Writes: <output-dir>/<table>/part-00000.parquet, part-00001.parquet, ...: one folder per table, the
        layout Spark (and cehrbert_data in step 2) reads as one table. Each folder is swapped in
        whole; a failure or Ctrl-C leaves the earlier export untouched.
Connection like psql: --dsn, else the PG* variables and ~/.pgpass, else the embedded demo server
(make demo-db). How the export streams, types and snapshots: cehrgpt_tutorials/omop/export.py.

Examples:
    source setup_env.sh
    python export_omop.py --schema cdm --output-dir "$OMOP_DIR"
    python export_omop.py --dsn "postgresql://me@dbhost/synthea" --tables person,death --jobs 4
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.omop.export import (
    DEFAULT_ROWS_PER_FILE,
    DEFAULT_TABLES,
    INTERRUPTED,
    OPTIONAL_DEFAULT_TABLES,
    export,
)
from cehrgpt_tutorials.paths import omop_dir


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Step 1: export OMOP CDM tables from PostgreSQL to <output-dir>/<table>/part-*.parquet "
            "(one consistent snapshot, streamed, typed from the database catalog). Types: smallint/"
            "integer/bigint -> int16/int32/int64; numeric -> float64 (double: fine for OMOP's "
            "value_as_number, but exact decimals beyond ~15 digits are rounded); real/double -> "
            "float32/float64; date -> date32; timestamp -> timestamp[us]; timestamptz -> "
            "timestamp[us, UTC]; boolean -> bool; everything else (varchar, text, ...) -> string."
        ),
        epilog=(
            "Connection like psql: --dsn, else PGHOST/PGPORT/PGDATABASE/PGUSER/PGPASSWORD/PGSERVICE "
            "and ~/.pgpass, else the embedded demo server under $OMOP_DIR/pgdata. "
            "Example: python export_omop.py --schema cdm --output-dir \"$OMOP_DIR\""
        ),
    )
    parser.add_argument("--dsn", help="libpq connection string or URI (default: libpq environment, else the demo server)")
    parser.add_argument("--schema", default="cdm", help="schema holding the OMOP tables (default: cdm)")
    parser.add_argument(
        "--tables",
        help=(
            "comma-separated tables (default: " + ", ".join(DEFAULT_TABLES)
            + ", plus " + " and ".join(OPTIONAL_DEFAULT_TABLES) + " when they exist)"
        ),
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the <table>/ folders go (default: $OMOP_DIR, else omop_synthea)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="tables exported in parallel, one connection each (default: 2)")
    parser.add_argument(
        "--rows-per-file",
        type=int,
        default=DEFAULT_ROWS_PER_FILE,
        help=f"start a new part file after this many rows (default: {DEFAULT_ROWS_PER_FILE:,})",
    )
    arguments = parser.parse_args(argv)
    if arguments.jobs < 1:
        parser.error("--jobs must be at least 1")
    if arguments.rows_per_file < 1:
        parser.error("--rows-per-file must be at least 1")
    if arguments.tables is not None:
        arguments.tables = [name.strip() for name in arguments.tables.split(",") if name.strip()]
        if not arguments.tables:
            parser.error("--tables is empty")
    arguments.output_dir = arguments.output_dir or omop_dir()
    return arguments


def interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    # SIGTERM (a scheduler, `kill`) cleans up like Ctrl-C: no half-written folder is left.
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        export(arguments)
    except PipelineError as error:
        fail(str(error))
    except KeyboardInterrupt:  # wherever it lands, even after the last table was swapped in
        fail(INTERRUPTED, exit_code=130)


if __name__ == "__main__":
    main()
