"""Step 7's four cohort SQLs at K times the demo CDM, old (per-row subqueries) against new (set-based),
without and with OHDSI's indexes: seconds per task, growth exponents, and the indexes' cost.

Step: 7, predict.py's first stage (the cohort: cohort.query_cohort runs the SQL as predict.py renders
it, joins the person table, fetches and checks the rows; writing the cohort table is not timed).
Reads: the Synthea demo, loaded by `load_omop.py --demo` into an embedded PostgreSQL of this bench's
own (under --work), and replicated K times by bench/scale_bench.py's build_replicated_cdm (schema
scale_k<K>: K x 1,130 persons, ids shifted per copy; the tables it builds carry no index at all).
Writes: nothing but that server's schemas (under --work, deleted at the end unless --keep) and stdout.

For each K:
  build      build_replicated_cdm, then a full ANALYZE of its tables (the statistics autovacuum gives a
             user's own CDM; the analyze is timed on its own)
  no index   each task's old SQL (K <= --old-up-to; statement_timeout --old-timeout) and new SQL, on
             the tables as built: what a user's own CDM without OHDSI's indexes runs
  indexes    load.create_indexes, exactly as load_omop.py builds them in its staging schema (timed)
  indexed    each task's new SQL (the goal: <= 60 s per task at 100x, exponent 10x -> 100x <= 1.1) and
             old SQL (K <= --old-up-to)
  load       with --load-times K: scale_k<K> written as CSV files, then load_omop.py on them (schema
             load_k<K>, dropped after): the index cost inside a real load (the build above is CREATE
             TABLE AS, far faster than a load from files)
Every statement runs under statement_timeout (--timeout, --old-timeout): a run that hits it prints
"> N s" and the exponents that need it are not computed. Old and new rows are compared wherever both
finished. The old SQL is tests/test_cohort_sql.py's OLD_SQL (the text before the rewrite, the test's
oracle), imported from there so that it exists once.

--keep keeps the server and the replicated schemas (100x takes minutes to build and a few GB of disk):
the next run with --keep reuses a complete scale_k<K> (its indexes dropped first), builds the missing
ones. --drop stops the server and deletes --work: the way to get the disk back.

Example:
    source setup_env.sh && flock /tmp/heavy.lock python bench/cohort_bench.py --times 1 10 100 --keep
    python bench/cohort_bench.py --times 1 10 --old-up-to 1        # the new SQL only past 1x, minutes
    python bench/cohort_bench.py --times 100 --old-up-to 0 --load-times 100 --keep   # + the real load at 100x
    python bench/cohort_bench.py --drop                            # stop its server, delete --work
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from scale_bench import ID_SHIFT, PERSON_TABLES, VOCABULARY_TABLES, build_replicated_cdm  # noqa: E402

from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server  # noqa: E402
from cehrgpt_tutorials.errors import PipelineError  # noqa: E402
from cehrgpt_tutorials.omop.cdm_schema import CDM_INDEXES  # noqa: E402
from cehrgpt_tutorials.omop.load import create_indexes  # noqa: E402
from cehrgpt_tutorials.prediction import cohort as cohorts  # noqa: E402

TASKS = ["er_visit_within_365_days", "acute_care_within_730_days", "respiratory_infection_within_365_days",
         "cardiometabolic_onset_within_1825_days"]
SHORT = {"er_visit_within_365_days": "er_visit", "acute_care_within_730_days": "acute_care",
         "respiratory_infection_within_365_days": "respiratory", "cardiometabolic_onset_within_1825_days": "cardiometab"}
COMPLETE_MARK = "cohort_bench: complete replicated CDM"
DEFAULT_WORK = REPO_ROOT / "bench" / "out" / "cohort_bench"


def old_sql() -> dict[str, str]:
    """The cohort SQL before it became set-based: tests/test_cohort_sql.py's oracle."""
    from test_cohort_sql import OLD_SQL

    return OLD_SQL


def schema_is_complete(connection, schema: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,))
        row = cursor.fetchone()
    connection.commit()
    return bool(row) and row[0] == COMPLETE_MARK


def prepare_schema(connection, uri: str, times: int, keep: bool) -> dict:
    """scale_k<times> built (or, with --keep, reused without its indexes) and fully analyzed; timings."""
    schema = f"scale_k{times}"
    result = {"reused": False, "build_s": None}
    if keep and schema_is_complete(connection, schema):
        result["reused"] = True
        with connection, connection.cursor() as cursor:
            for indexes in CDM_INDEXES.values():
                for name, _ in indexes:
                    cursor.execute(f'DROP INDEX IF EXISTS {schema}."{name}"')
    else:
        started = time.perf_counter()
        counts = build_replicated_cdm(uri, times)
        result["build_s"] = time.perf_counter() - started
        result["rows"] = sum(counts.values())
    started = time.perf_counter()
    connection.autocommit = True
    with connection.cursor() as cursor:
        for table in VOCABULARY_TABLES + PERSON_TABLES:
            cursor.execute("SELECT to_regclass(%s)", (f"{schema}.{table}",))
            if cursor.fetchone()[0] is not None:
                cursor.execute(f"ANALYZE {schema}.{table}")
        cursor.execute(f"COMMENT ON SCHEMA {schema} IS %s", (COMPLETE_MARK,))
        cursor.execute(f"SELECT count(*) FROM {schema}.person")
        result["persons"] = cursor.fetchone()[0]
        cursor.execute("SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE schemaname = %s", (schema,))
        result.setdefault("rows", int(cursor.fetchone()[0] or 0))
    connection.autocommit = False
    result["analyze_s"] = time.perf_counter() - started
    return result


def time_cohort(connection, sql: str, schema: str, name: str, timeout_s: int) -> dict:
    """One cohort as predict.py runs it (query_cohort), under statement_timeout; its seconds, rows and
    whether step 7 warned of missing person_id indexes."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
    connection.commit()
    warnings = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(warnings):
            cohort = cohorts.query_cohort(connection, sql, schema, name)
        connection.commit()  # its locks go: the next K's build drops and creates schemas
    except PipelineError as error:
        if "statement timeout" not in str(error):
            raise
        return {"seconds": None, "timeout_s": timeout_s, "cohort": None, "warned": "warning:" in warnings.getvalue()}
    return {"seconds": time.perf_counter() - started, "cohort": cohort, "warned": "warning:" in warnings.getvalue()}


def same_rows(first: dict, second: dict) -> bool | None:
    if first.get("cohort") is None or second.get("cohort") is None:
        return None
    return first["cohort"].reset_index(drop=True).equals(second["cohort"].reset_index(drop=True))


LOAD_LINE = re.compile(r"^loaded ([\d,]+) rows into schema \S+ in ([\d.]+) s", re.MULTILINE)
INDEX_LINE = re.compile(r"^indexes: (\d+) created in ([\d.]+) s", re.MULTILINE)


def time_load(connection, uri: str, times: int, work: Path, environment: dict) -> dict:
    """scale_k<times> written as CSV files (COPY TO STDOUT), then load_omop.py on them into schema
    load_k<times>: the real load's time, its index line among it. The files and the schema are deleted after."""
    schema, folder = f"scale_k{times}", work / f"csv_k{times}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with connection, connection.cursor() as cursor:
        for table in VOCABULARY_TABLES + PERSON_TABLES:
            cursor.execute("SELECT to_regclass(%s)", (f"{schema}.{table}",))
            if cursor.fetchone()[0] is not None:
                with open(folder / f"{table}.csv", "w", encoding="utf-8") as handle:
                    cursor.copy_expert(f"COPY {schema}.{table} TO STDOUT WITH (FORMAT csv, HEADER)", handle)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    load = subprocess.run([sys.executable, "load_omop.py", "--input-dir", str(folder), "--schema", f"load_k{times}",
                           "--replace", "--dsn", uri], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    with connection, connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS load_k{times} CASCADE")
    if load.returncode != 0:
        raise SystemExit(f"error: load_omop.py on {folder} failed: {load.stderr.strip().splitlines()[-1:]}")
    loaded, indexed = LOAD_LINE.search(load.stdout), INDEX_LINE.search(load.stdout)
    result = {"csv_s": export_seconds, "load_wall_s": wall, "load_s": float(loaded.group(2)),
              "load_index_s": float(indexed.group(2))}
    print(f"  load_omop.py on its CSV files: {indexed.group(0)}; {loaded.group(0)} (process {wall:.1f} s; "
          f"the CSV files written in {export_seconds:.1f} s)", flush=True)
    return result


def run_scale(connection, uri: str, times: int, arguments, old: dict[str, str]) -> dict:
    schema = f"scale_k{times}"
    print(f"\n== {times}x: schema {schema}", flush=True)
    result = {"times": times, **prepare_schema(connection, uri, times, arguments.keep)}
    built = "reused (--keep)" if result["reused"] else f"built in {result['build_s']:.1f} s"
    print(f"  {result['persons']:,} persons, {result['rows']:,} rows; {built}; ANALYZE {result['analyze_s']:.1f} s",
          flush=True)
    new = {task: (cohorts.COHORT_SQL_DIR / f"{task}.sql").read_text() for task in TASKS}
    runs: dict[tuple[str, str, str], dict] = {}
    with_old = times <= arguments.old_up_to

    def measure(phase: str) -> None:
        for task in TASKS:
            for variant in (["old"] if with_old else []) + ["new"]:
                text = old[task] if variant == "old" else new[task]
                timeout = arguments.old_timeout if variant == "old" else arguments.timeout
                run = time_cohort(connection, text, schema, f"{variant} {task}", timeout)
                runs[(phase, variant, task)] = run
                shown = f"{run['seconds']:8.2f} s" if run["seconds"] is not None else f"> {timeout} s (timeout)"
                rows = f"{len(run['cohort']):,} rows, {int(run['cohort']['label'].sum()):,} outcomes" \
                    if run["cohort"] is not None else ""
                print(f"  {phase:<9} {variant} {SHORT[task]:<12} {shown}  {rows}"
                      f"{'  (step 7 warned: no person_id index)' if run['warned'] else ''}", flush=True)

    measure("no index")
    index_count, index_seconds = create_indexes(connection, schema, VOCABULARY_TABLES + PERSON_TABLES)
    result.update(indexes=index_count, index_s=index_seconds)
    measure("indexed")
    for task in TASKS:
        pairs = [runs.get((phase, variant, task)) for phase in ("no index", "indexed") for variant in ("old", "new")]
        present = [run for run in pairs if run is not None and run["cohort"] is not None]
        result.setdefault("same_rows", {})[task] = all(same_rows(present[0], run) for run in present[1:])
    if times in arguments.load_times:
        result.update(time_load(connection, uri, times, arguments.work.resolve(), arguments.environment))
    result["seconds"] = {f"{phase}/{variant}/{task}": run["seconds"] for (phase, variant, task), run in runs.items()}
    result["warned"] = {f"{phase}/{variant}/{task}": run["warned"] for (phase, variant, task), run in runs.items()}
    return result


def exponent(low: float | None, high: float | None, k_low: int, k_high: int) -> float | None:
    if not low or not high:
        return None
    return math.log(high / low) / math.log(k_high / k_low)


def print_summary(results: list[dict], arguments) -> None:
    ks = [result["times"] for result in results]
    columns = [("no index", "old"), ("no index", "new"), ("indexed", "old"), ("indexed", "new")]
    print("\n== seconds per task (query_cohort: SQL + person join + fetch + checks)")
    print(f"{'task':<13} {'phase/sql':<14} " + " ".join(f"{f'{k}x':>9}" for k in ks) + "  exponents")
    for task in TASKS:
        for phase, variant in columns:
            key = f"{phase}/{variant}/{task}"
            values = [result["seconds"].get(key, "absent") for result in results]
            if all(value == "absent" for value in values):
                continue
            cells = " ".join(f"{'-':>9}" if value == "absent" else f"{'timeout':>9}" if value is None
                             else f"{value:9.2f}" for value in values)
            growth = []
            known = [None if value == "absent" else value for value in values]
            for index in range(len(ks) - 1):
                value = exponent(known[index], known[index + 1], ks[index], ks[index + 1])
                if value is not None:
                    growth.append(f"{ks[index]}x->{ks[index + 1]}x {value:.2f}")
            print(f"{SHORT[task]:<13} {phase + ' ' + variant:<14} {cells}  {', '.join(growth)}")
    print("\n== the replicated CDM and OHDSI's indexes (create_indexes, as load_omop.py runs it)")
    print(f"{'K':>5} {'persons':>9} {'rows':>12} {'build s':>9} {'ANALYZE s':>10} {'indexes':>8} {'index s':>8} "
          f"{'index/build':>12}  same rows old/new")
    for result in results:
        build = f"{result['build_s']:9.1f}" if result["build_s"] is not None else f"{'reused':>9}"
        share = f"{result['index_s'] / result['build_s']:11.0%}" if result["build_s"] else f"{'-':>11}"
        same = ", ".join(f"{SHORT[task]} {'yes' if same else 'NO'}" for task, same in result["same_rows"].items())
        print(f"{result['times']:>4}x {result['persons']:>9,} {result['rows']:>12,} {build} {result['analyze_s']:10.1f} "
              f"{result['indexes']:>8} {result['index_s']:8.1f} {share}  {same}")
    loads = [result for result in results if "load_s" in result]
    if loads:
        print("\n== load_omop.py on the replicated CDM's CSV files (--load-times): the index cost in the real load")
        print(f"{'K':>5} {'load s':>8} {'of it indexes s':>16} {'indexes / load':>15} {'process s':>10}")
        for result in loads:
            print(f"{result['times']:>4}x {result['load_s']:8.1f} {result['load_index_s']:16.1f} "
                  f"{result['load_index_s'] / result['load_s']:15.0%} {result['load_wall_s']:10.1f}")
    indexed = [f"indexed/new/{task}" for task in TASKS]
    if ks and max(ks) == 100:
        top = results[ks.index(100)]
        worst = max((top["seconds"][key] or math.inf) for key in indexed)
        print(f"\ngoal, every cohort at 100x <= 60 s (indexed, new SQL): slowest {worst:.1f} s: "
              f"{'met' if worst <= 60 else 'NOT met'}")
        if 10 in ks:
            low = results[ks.index(10)]
            growth = [exponent(low["seconds"][key], top["seconds"][key], 10, 100) for key in indexed]
            shown = ", ".join(f"{SHORT[task]} {value:.2f}" if value is not None else f"{SHORT[task]} -"
                              for task, value in zip(TASKS, growth, strict=True))
            known = [value for value in growth if value is not None]
            print(f"goal, exponent 10x -> 100x <= 1.1: {shown}: "
                  f"{'met' if known and len(known) == len(growth) and max(known) <= 1.1 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--times", type=int, nargs="+", default=[1, 10, 100], help="K values (default 1 10 100)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"its server's folder (default {DEFAULT_WORK.relative_to(REPO_ROOT)}); deleted at the "
                             "end unless --keep")
    parser.add_argument("--keep", action="store_true",
                        help="keep the server's data and the replicated schemas for the next run (--drop deletes them)")
    parser.add_argument("--drop", action="store_true", help="stop the server under --work and delete --work, then exit")
    parser.add_argument("--old-up-to", type=int, default=10,
                        help="time the old SQL only at K <= this (default 10: it is quadratic, hours at 100x)")
    parser.add_argument("--old-timeout", type=int, default=900, help="statement_timeout for the old SQL, seconds (900)")
    parser.add_argument("--timeout", type=int, default=600, help="statement_timeout for the new SQL, seconds (600)")
    parser.add_argument("--load-times", type=int, nargs="*", default=[],
                        help="K values at which to also time load_omop.py on scale_k<K> written as CSV files (the "
                             "index cost within the real load; 100x: ~3 GB of CSV for a few minutes)")
    arguments = parser.parse_args()
    work = arguments.work.resolve()
    pgdata = work / "pgdata"
    if arguments.drop:
        stopped = stop_embedded_server(pgdata)
        shutil.rmtree(work, ignore_errors=True)
        print(f"{'stopped the server and ' if stopped else ''}deleted {work}")
        return
    if any(k < 1 or k * ID_SHIFT >= 2**31 for k in arguments.times):
        parser.error(f"--times must be between 1 and {2**31 // ID_SHIFT - 1} (ids are 32-bit integers)")
    if min(arguments.timeout, arguments.old_timeout) < 1:
        parser.error("--timeout and --old-timeout must be at least 1 second")

    import psycopg2

    work.mkdir(parents=True, exist_ok=True)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PGHOST", "PGDATABASE", "PGSERVICE", "CEHRGPT_PGDATA")}
    arguments.environment = environment
    old = old_sql()
    uri = start_embedded_server(pgdata)
    results = []
    try:
        started = time.perf_counter()
        load = subprocess.run([sys.executable, "load_omop.py", "--demo", "--dsn", uri], cwd=REPO_ROOT,
                              env=environment, capture_output=True, text=True)
        if load.returncode != 0:
            raise SystemExit(f"error: loading the demo failed: {load.stderr.strip().splitlines()[-1:]}")
        line = [text for text in load.stdout.splitlines() if text.startswith(("indexes:", "loaded", "demo CDM already"))]
        print(f"demo CDM (schema cdm): {'; '.join(line)} ({time.perf_counter() - started:.1f} s)", flush=True)
        connection = psycopg2.connect(uri)
        try:
            for times in sorted(set(arguments.times)):
                results.append(run_scale(connection, uri, times, arguments, old))
        finally:
            connection.close()
    finally:
        stop_embedded_server(pgdata)
        if not arguments.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(results, arguments)
    if arguments.keep:
        print(f"\nkept {work} (the server's data, schemas scale_k*); `python bench/cohort_bench.py --drop` deletes it")


if __name__ == "__main__":
    main()
