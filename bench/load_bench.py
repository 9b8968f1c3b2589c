"""Benchmark for load_omop.py: the whole Synthea 1001 demo into a fresh embedded PostgreSQL.

Goal: `python load_omop.py --demo` on a machine with no server yet (python start, initdb, server
start, then 15 tables with 322,647 rows, measurement's 199,514 included, and the two derived
concept tables) in <= 15 s on 2 cores. The split between "until connected" (python, initdb, server
start: what no loader can avoid) and "loading" comes from the same run. Baselines measured in the same run, on a second fresh server:
- the COPY floor: the same rows, already cleaned into CSV in memory, sent by psycopg2 COPY (FREEZE,
  as load_omop.py does) into the same CDM tables, without primary keys, row counts, file reading or
  checks — what PostgreSQL itself needs;
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server  # noqa: E402
from cehrgpt_tutorials.omop.demo_data import demo_csv_dir  # noqa: E402

GOAL_SECONDS = 15.0


def environment_without_pg(pgdata: Path) -> dict[str, str]:
    """A clean environment in which load_omop.py starts its own embedded server in pgdata."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    environment["CEHRGPT_PGDATA"] = str(pgdata)
    environment["PYTHONWARNINGS"] = "ignore"
    return environment


def time_load_omop_demo(workdir: Path) -> tuple[float, float, dict[str, float]]:
    """`python load_omop.py --demo` with no server running: wall time, the time at which it printed
    its connection URI (python start + initdb + server start + connect), and per-table seconds."""
    pgdata = workdir / "pgdata"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "load_omop.py"), "--demo"], env=environment_without_pg(pgdata),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    connected = float("nan")
    lines = []
    for line in process.stdout:
        if line.startswith("PostgreSQL: "):
            connected = time.perf_counter() - started
        lines.append(line)
    stderr = process.stderr.read()
    process.wait()
    seconds = time.perf_counter() - started
    stop_embedded_server(pgdata)
    if process.returncode != 0:
        sys.exit(f"load_omop.py --demo failed:\n{stderr}")
    per_table = {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^\s+(\w+)\s+[\d,]+ rows\s+([\d.]+) s", "".join(lines), re.MULTILINE)
    }
    return seconds, connected, per_table


def cleaned_csv_bytes(csv_folder: Path) -> dict[str, tuple[list[str], bytes]]:
    """Each demo table as clean CSV (CDM columns only, no header, no extra fields), prepared untimed."""
    from cehrgpt_tutorials.omop import load as load_omop

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


def time_copy_floor(uri: str, tables: dict[str, tuple[list[str], bytes]], schema: str) -> float:
    import psycopg2
    from psycopg2 import sql

    from cehrgpt_tutorials.omop import load as load_omop

    connection = psycopg2.connect(uri)
    with connection, connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    started = time.perf_counter()
    for table, (columns, payload) in tables.items():
        with connection, connection.cursor() as cursor:
            cursor.execute(load_omop.create_table_statement(schema, table))
            copy = sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT csv, FREEZE)").format(
                sql.Identifier(schema), sql.Identifier(table),
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
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--skip-pandas", action="store_true", help="leave out the pandas.to_sql baseline")
    arguments = parser.parse_args()

    csv_folder = demo_csv_dir()  # downloaded and cached before any timing
    workdir = Path(tempfile.mkdtemp(prefix="load_bench-"))
    runs, floors = [], []
    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; demo CSVs: {csv_folder}")
        for repetition in range(arguments.repeat):
            runs.append(time_load_omop_demo(workdir / f"run{repetition}"))
            print(f"  run {repetition + 1}: load_omop.py --demo {runs[-1][0]:.2f} s", flush=True)

        tables = cleaned_csv_bytes(csv_folder)
        pgdata = workdir / "baseline" / "pgdata"
        uri = start_embedded_server(pgdata)
        try:
            for repetition in range(arguments.repeat):
                floors.append(time_copy_floor(uri, tables, f"floor{repetition}"))
            pandas = None if arguments.skip_pandas else time_pandas_to_sql(uri, csv_folder, "visit_occurrence")
        finally:
            stop_embedded_server(pgdata)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load_seconds = statistics.median(run[0] for run in runs)
    connect_seconds = statistics.median(run[1] for run in runs)
    loading_seconds = statistics.median(run[0] - run[1] for run in runs)
    floor_seconds = statistics.median(floors)
    rows = sum(payload.count(b"\n") for _, payload in tables.values())
    print(f"\nmedians of {arguments.repeat} runs, load average now {os.getloadavg()[0]:.1f}")
    print(f"load_omop.py --demo, fresh server, wall time          {load_seconds:6.2f} s  "
          f"(goal <= {GOAL_SECONDS:.0f} s: {'met' if load_seconds <= GOAL_SECONDS else 'NOT met'})")
    print(f"  until connected (python, initdb, server start)      {connect_seconds:6.2f} s")
    print(f"  loading 15 tables + deriving 2 (after connect)      {loading_seconds:6.2f} s")
    print(f"COPY floor: {rows:,} clean rows, no checks, no keys    {floor_seconds:6.2f} s")
    print(f"ratio: load_omop.py loading / COPY floor                {loading_seconds / floor_seconds:6.2f}x")
    if pandas is not None:
        pandas_seconds, pandas_rows = pandas
        ours = statistics.median(run[2].get("visit_occurrence", float("nan")) for run in runs)
        print(f"pandas.to_sql, visit_occurrence ({pandas_rows:,} rows)       {pandas_seconds:6.2f} s")
        print(f"load_omop.py, visit_occurrence (same rows, with key)  {ours:6.2f} s")
        print(f"ratio: pandas.to_sql / load_omop.py                     {pandas_seconds / ours:6.1f}x")


if __name__ == "__main__":
    main()
