"""Benchmark for load_omop.py (issue 3): the whole Synthea 1001 demo into a fresh embedded PostgreSQL.

Goal: `python load_omop.py --demo` on a machine with no server yet — initdb, server start and the
load of 15 tables (324k rows, measurement's 199,514 included) plus the derived concept tables —
in <= 15 s on 2 cores. Baselines measured in the same run, on a second fresh server:
- server start alone (initdb + start), the part no loader can avoid;
- the COPY floor: the same rows, already cleaned into CSV in memory, sent by psycopg2 COPY into
  the same CDM tables (no primary keys, no parsing, no checks) — what PostgreSQL itself needs;
- pandas.DataFrame.to_sql (SQLAlchemy, the seed's style) on visit_occurrence (32k rows), against
  load_omop.py's time for that table (the full demo by to_sql would take minutes).

    source setup_env.sh && python bench/load_bench.py            # prints times and ratios
    python bench/load_bench.py --skip-pandas                     # without the slow baseline
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.common import start_embedded_server, stop_embedded_server  # noqa: E402
from cehrgpt_tutorials.demo_data import demo_csv_dir  # noqa: E402

GOAL_SECONDS = 15.0


def environment_without_pg(pgdata: Path) -> dict[str, str]:
    """A clean environment in which load_omop.py starts its own embedded server in pgdata."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    environment["CEHRGPT_PGDATA"] = str(pgdata)
    environment["PYTHONWARNINGS"] = "ignore"
    return environment


def time_load_omop_demo(workdir: Path) -> tuple[float, dict[str, float], str]:
    """Wall time of `python load_omop.py --demo` with no server running, and its per-table seconds."""
    pgdata = workdir / "load_omop" / "pgdata"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "load_omop.py"), "--demo"],
        env=environment_without_pg(pgdata), cwd=REPO_ROOT, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    stop_embedded_server(pgdata)
    if result.returncode != 0:
        sys.exit(f"load_omop.py --demo failed:\n{result.stderr}")
    per_table = {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^\s+(\w+)\s+[\d,]+ rows\s+([\d.]+) s", result.stdout, re.MULTILINE)
    }
    return seconds, per_table, result.stdout


def cleaned_csv_bytes(csv_folder: Path) -> dict[str, tuple[list[str], bytes]]:
    """Each demo table as clean CSV (CDM columns only, no header, no extra fields), prepared untimed."""
    import load_omop

    tables = {}
    sources, _ = load_omop.find_table_sources(csv_folder)
    for table, source in sources.items():
        load_omop.inspect_columns(source)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for _, row in load_omop.csv_records(source, None):
            writer.writerow(row)
        tables[table] = (source.columns, buffer.getvalue().encode())
    return tables


def time_copy_floor(uri: str, tables: dict[str, tuple[list[str], bytes]]) -> float:
    import psycopg2
    from psycopg2 import sql

    import load_omop

    connection = psycopg2.connect(uri)
    with connection, connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA floor")
    started = time.perf_counter()
    for table, (columns, payload) in tables.items():
        with connection, connection.cursor() as cursor:
            cursor.execute(load_omop.create_table_statement("floor", table))
            copy = sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT csv)").format(
                sql.Identifier("floor"), sql.Identifier(table),
                sql.SQL(", ").join(sql.Identifier(name) for name in columns),
            )
            cursor.copy_expert(copy.as_string(connection), io.BytesIO(payload), size=1 << 20)
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def time_pandas_to_sql(uri: str, csv_folder: Path, table: str) -> tuple[float, int]:
    import pandas as pd
    from sqlalchemy import create_engine

    frame = pd.read_csv(csv_folder / f"{table.upper()}.csv")  # untimed: we time the database write
    engine = create_engine(uri.replace("postgresql://", "postgresql+psycopg2://", 1))
    started = time.perf_counter()
    frame.to_sql(table, engine, schema="public", if_exists="replace", index=False, chunksize=10_000)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-pandas", action="store_true", help="leave out the pandas.to_sql baseline")
    arguments = parser.parse_args()

    csv_folder = demo_csv_dir()  # downloaded and cached before any timing
    workdir = Path(tempfile.mkdtemp(prefix="load_bench-"))
    try:
        print(f"machine: {os.cpu_count()} CPUs; demo CSVs: {csv_folder}", flush=True)
        load_seconds, per_table, _ = time_load_omop_demo(workdir)

        tables = cleaned_csv_bytes(csv_folder)
        pgdata = workdir / "baseline" / "pgdata"
        started = time.perf_counter()
        uri = start_embedded_server(pgdata)
        server_start_seconds = time.perf_counter() - started
        try:
            floor_seconds = time_copy_floor(uri, tables)
            pandas = None if arguments.skip_pandas else time_pandas_to_sql(uri, csv_folder, "visit_occurrence")
        finally:
            stop_embedded_server(pgdata)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = sum(payload.count(b"\n") for _, payload in tables.values())
    loader_part = load_seconds - server_start_seconds
    print()
    print(f"load_omop.py --demo, fresh server, wall time       {load_seconds:7.2f} s   (goal <= {GOAL_SECONDS:.0f} s: "
          f"{'met' if load_seconds <= GOAL_SECONDS else 'NOT met'})")
    print(f"  server start alone (initdb + start)              {server_start_seconds:7.2f} s")
    print(f"  the rest (python start, read, check, COPY, keys)  {loader_part:7.2f} s")
    print(f"COPY floor, {len(tables)} tables, {rows:,} rows (no checks, no keys)  {floor_seconds:7.2f} s")
    print(f"ratio: load_omop.py without server start / COPY floor  {loader_part / floor_seconds:5.2f}x")
    if pandas is not None:
        pandas_seconds, pandas_rows = pandas
        ours = per_table.get("visit_occurrence", float("nan"))
        print(f"pandas.to_sql visit_occurrence ({pandas_rows:,} rows)      {pandas_seconds:7.2f} s")
        print(f"load_omop.py visit_occurrence (same rows)          {ours:7.2f} s")
        print(f"ratio: pandas.to_sql / load_omop.py on visit_occurrence  {pandas_seconds / ours:5.1f}x")


if __name__ == "__main__":
    main()
