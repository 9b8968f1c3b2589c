"""Plausibility checks of a loaded OMOP CDM schema, in the spirit of OHDSI's Data Quality Dashboard:
counts of records no real CDM should have, for the synthetic schema next to the real one.

    visits_outside_observation_period  visits not inside any observation period of their person
    events_before_birth                events (visits, conditions, drugs, procedures, measurements, deaths)
                                       dated before 1 January of the person's year of birth
    events_over_30_days_after_death    events more than 30 days after the person's (first) death date
    visits_after_source_end            visits starting after the source CDM's last visit start date
    events_without_person              events whose person_id is not in person
    events_without_visit               events whose visit_occurrence_id is not in visit_occurrence

restore_synthetic.sh runs it after loading synthetic_cdm. On its own:
    python -m cehrgpt_tutorials.omop.plausibility --schema synthetic_cdm --source-schema cdm [--dsn DSN]
Prints one line per check with both schemas' counts; exit 0 (the counts are information, not errors).

The real CDM's counts are the same on every restore until the real CDM changes, and on a large CDM
they are most of this step (six checks, joins over every event table). With --cache FILE
(restore_synthetic.sh passes SYNTHETIC_DATA_OUTPUT_DIR/real_cdm_plausibility.json) they are computed
once and reused while the key matches. The key is a fingerprint of exactly what the checks read:
per table, its row count, its columns' types and a checksum over the rows of the columns the checks
read (sum of hash_record_extended: one scan per table, no joins), plus the source's last date and
this module's code. Any added, removed or changed row of those columns gives another key (short of a
64-bit hash collision), so a changed CDM is never answered with stale numbers; changes to other
columns or tables keep the key, and cannot change the counts. The fingerprint and the checks read
one snapshot (REPEATABLE READ), so a load running meanwhile cannot pair one state's key with
another state's counts.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import time
from pathlib import Path

from psycopg2 import sql

from cehrgpt_tutorials.db import connect, tables_in_schema
from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail
from cehrgpt_tutorials.files import atomic_file

# Event tables and their date column (as cehrgpt's converter fills them).
EVENT_DATES = {
    "visit_occurrence": "visit_start_date",
    "condition_occurrence": "condition_start_date",
    "drug_exposure": "drug_exposure_start_date",
    "procedure_occurrence": "procedure_date",
    "measurement": "measurement_date",
    "death": "death_date",
}
CHECKS = (
    "visits_outside_observation_period",
    "events_before_birth",
    "events_over_30_days_after_death",
    "visits_after_source_end",
    "events_without_person",
    "events_without_visit",
)
DAYS_AFTER_DEATH = 30
CACHE_FORMAT = "cehrgpt-tutorial real-CDM plausibility cache v1"  # marks a file as ours (see read_cache)
CACHE_FILE_NAME = "real_cdm_plausibility.json"


def checked_columns() -> dict[str, tuple[str, ...]]:
    """The columns run_checks reads, per table: what the cache key must cover."""
    columns = {"person": ("person_id", "year_of_birth"),
               "observation_period": ("person_id", "observation_period_start_date", "observation_period_end_date"),
               "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_start_date", "visit_end_date"),
               "death": ("person_id", "death_date")}
    for table, date in EVENT_DATES.items():
        columns.setdefault(table, ("person_id", date, "visit_occurrence_id"))
    return columns


def _count(cursor, query, parameters=()) -> int:
    cursor.execute(query, parameters)
    return int(cursor.fetchone()[0])


def source_end_date(connection, schema: str) -> datetime.date | None:
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT max(visit_start_date) FROM {}.visit_occurrence").format(sql.Identifier(schema)))
        return cursor.fetchone()[0]


def run_checks(connection, schema: str, source_end: datetime.date | None) -> dict[str, int | None]:
    """Each check's count in `schema` (None: the tables it needs are not there)."""
    present = set(tables_in_schema(connection, schema))
    s = sql.Identifier(schema)
    events = [table for table in EVENT_DATES if table in present]
    counts: dict[str, int | None] = dict.fromkeys(CHECKS)
    with connection.cursor() as cursor:
        if {"visit_occurrence", "observation_period"} <= present:
            counts["visits_outside_observation_period"] = _count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.visit_occurrence v WHERE NOT EXISTS (SELECT 1 FROM {s}.observation_period op "
                "WHERE op.person_id = v.person_id AND v.visit_start_date >= op.observation_period_start_date "
                "AND v.visit_end_date <= op.observation_period_end_date)").format(s=s))
        if "person" in present:
            counts["events_before_birth"] = sum(_count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.{t} e JOIN {s}.person p ON p.person_id = e.person_id "
                "WHERE e.{d} < make_date(p.year_of_birth, 1, 1)").format(
                    s=s, t=sql.Identifier(table), d=sql.Identifier(EVENT_DATES[table]))) for table in events)
            counts["events_without_person"] = sum(_count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.{t} e WHERE NOT EXISTS (SELECT 1 FROM {s}.person p "
                "WHERE p.person_id = e.person_id)").format(s=s, t=sql.Identifier(table))) for table in events)
        if "death" in present:
            counts["events_over_30_days_after_death"] = sum(_count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.{t} e JOIN (SELECT person_id, min(death_date) AS death_date FROM {s}.death "
                "GROUP BY person_id) d ON d.person_id = e.person_id WHERE e.{d} > d.death_date + %s").format(
                    s=s, t=sql.Identifier(table), d=sql.Identifier(EVENT_DATES[table])), (DAYS_AFTER_DEATH,))
                for table in events if table != "death")
        if "visit_occurrence" in present and source_end is not None:
            counts["visits_after_source_end"] = _count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.visit_occurrence WHERE visit_start_date > %s").format(s=s), (source_end,))
        if "visit_occurrence" in present:
            counts["events_without_visit"] = sum(_count(cursor, sql.SQL(
                "SELECT count(*) FROM {s}.{t} e WHERE e.visit_occurrence_id IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM {s}.visit_occurrence v WHERE v.visit_occurrence_id = e.visit_occurrence_id)").format(
                    s=s, t=sql.Identifier(table))) for table in events if table not in ("visit_occurrence", "death"))
    return counts


def fingerprint(connection, schema: str, source_end: datetime.date | None) -> str:
    """The cache key of `schema`'s counts (see the module's docstring): a sha256 in hex."""
    present = set(tables_in_schema(connection, schema))
    # hash_record_extended is PostgreSQL 14+; before, the row's text (slower, as exact).
    row_hash = ("hash_record_extended(ROW({c}), 0)" if connection.server_version >= 140000
                else "hashtextextended(ROW({c})::text, 0)")
    tables = {}
    with connection.cursor() as cursor:
        for table, columns in checked_columns().items():
            if table not in present:
                continue
            cursor.execute("SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = %s AND table_name = %s AND column_name = ANY(%s) ORDER BY 1",
                           (schema, table, list(columns)))
            types = cursor.fetchall()
            present_columns = [name for name, _ in types]
            if not present_columns:
                tables[table] = {"types": []}  # run_checks would fail on it; still a state of its own
                continue
            cursor.execute(sql.SQL(f"SELECT count(*), coalesce(sum({row_hash}), 0)::text FROM {{s}}.{{t}}").format(
                s=sql.Identifier(schema), t=sql.Identifier(table),
                c=sql.SQL(", ").join(map(sql.Identifier, present_columns))))
            rows, checksum = cursor.fetchone()
            tables[table] = {"types": types, "rows": rows, "checksum": checksum}
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    described = {"code": code, "row_hash": row_hash, "source_end": str(source_end), "tables": tables}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def read_cache(path: Path) -> dict | None:
    """The cache file's entry, None when there is none; PipelineError when `path` is not a cache of ours
    (it is never overwritten then: it may be someone's file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PipelineError(f"cannot read the plausibility cache: {describe_os_error(error)}") from None
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        raise PipelineError(f"--cache {path} is not a plausibility cache written by this tutorial; "
                            "name another file (it is left as it is)")
    counts = entry.get("counts")
    complete = (isinstance(entry.get("key"), str) and isinstance(counts, dict) and set(counts) == set(CHECKS)
                and all(value is None or isinstance(value, int) for value in counts.values()))
    return entry if complete else {"format": CACHE_FORMAT, "key": "damaged"}  # ours, so recomputed and rewritten


def write_cache(path: Path, entry: dict) -> None:
    try:
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        raise PipelineError(f"cannot write the plausibility cache: {describe_os_error(error)}") from None


def real_side(connection, schema: str, source_end: datetime.date | None, cache: Path | None) -> dict[str, int | None]:
    """run_checks on the real CDM, or its counts from `cache` when the key matches; says which it did."""
    if cache is None:
        return run_checks(connection, schema, source_end)
    entry = read_cache(cache)
    started = time.perf_counter()
    key = fingerprint(connection, schema, source_end)
    keyed = time.perf_counter() - started
    if entry is not None and entry.get("key") == key:
        print(f"real CDM's plausibility side: reused (key {key[:12]}, fingerprint {keyed:.2f} s; computed "
              f"{entry.get('computed_at', '?')}) from {cache}", flush=True)
        return {check: entry["counts"][check] for check in CHECKS}
    started = time.perf_counter()
    counts = run_checks(connection, schema, source_end)
    seconds = time.perf_counter() - started
    write_cache(cache, {"format": CACHE_FORMAT, "key": key, "schema": schema, "source_end": str(source_end),
                        "computed_at": datetime.datetime.now().isoformat(timespec="seconds"),
                        "seconds": seconds, "counts": counts})
    why = "no cache yet" if entry is None else f"the real CDM or the checks changed since key {entry['key'][:12]}"
    print(f"real CDM's plausibility side: computed in {seconds:.2f} s ({why}; fingerprint {keyed:.2f} s; "
          f"key {key[:12]} saved to {cache})", flush=True)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schema", default="synthetic_cdm", help="the schema to check (default: %(default)s)")
    parser.add_argument("--source-schema", default="cdm", help="the real CDM, checked alongside (default: %(default)s)")
    parser.add_argument("--source-end-date", type=datetime.date.fromisoformat, default=None,
                        help="last date of the source data (default: the source schema's last visit_start_date)")
    parser.add_argument("--dsn", default=None, help="libpq connection string (default: PG* variables, else the demo server)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="reuse the source schema's counts from this file while its key matches, else compute "
                             f"and write them there (restore_synthetic.sh: {CACHE_FILE_NAME} in the synthetic "
                             "data folder; default: compute every time)")
    arguments = parser.parse_args(argv)
    try:
        connection = connect(arguments.dsn, quiet=True)
        # One snapshot for the key and the counts it stands for (nothing here writes).
        connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with connection:
            for schema in (arguments.schema, arguments.source_schema):
                if "visit_occurrence" not in tables_in_schema(connection, schema):
                    raise PipelineError(f"schema {schema} has no visit_occurrence table: load it first")
            source_end = arguments.source_end_date or source_end_date(connection, arguments.source_schema)
            synthetic = run_checks(connection, arguments.schema, source_end)
            real = real_side(connection, arguments.source_schema, source_end, arguments.cache)
        connection.close()
    except PipelineError as error:
        fail(str(error))
    print(f"Plausibility (counts of implausible records; source's last visit {source_end}):")
    print(f"  {'check':<36} {arguments.schema:>14} {arguments.source_schema:>14}")
    for check in CHECKS:
        shown = ["n/a" if value is None else f"{value:,}" for value in (synthetic[check], real[check])]
        print(f"  {check:<36} {shown[0]:>14} {shown[1]:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
