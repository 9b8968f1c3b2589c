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
"""

from __future__ import annotations

import argparse
import datetime

from psycopg2 import sql

from cehrgpt_tutorials.db import connect, tables_in_schema
from cehrgpt_tutorials.errors import PipelineError, fail

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schema", default="synthetic_cdm", help="the schema to check (default: %(default)s)")
    parser.add_argument("--source-schema", default="cdm", help="the real CDM, checked alongside (default: %(default)s)")
    parser.add_argument("--source-end-date", type=datetime.date.fromisoformat, default=None,
                        help="last date of the source data (default: the source schema's last visit_start_date)")
    parser.add_argument("--dsn", default=None, help="libpq connection string (default: PG* variables, else the demo server)")
    arguments = parser.parse_args(argv)
    try:
        connection = connect(arguments.dsn, quiet=True)
        with connection:
            for schema in (arguments.schema, arguments.source_schema):
                if "visit_occurrence" not in tables_in_schema(connection, schema):
                    raise PipelineError(f"schema {schema} has no visit_occurrence table: load it first")
            source_end = arguments.source_end_date or source_end_date(connection, arguments.source_schema)
            synthetic = run_checks(connection, arguments.schema, source_end)
            real = run_checks(connection, arguments.source_schema, source_end)
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
