"""The prediction task: a cohort defined in SQL and its labels, checked, and written to the cohort table.

A cohort SQL (see cohorts/er_visit_within_365_days.sql) returns one row per person and index date:
subject_id, cohort_start_date (the index date), cohort_end_date (the end of the time at risk) and
outcome_date (the first outcome in the time at risk, or NULL). The rows go into an OHDSI-style
`cohort` table (target cohort and outcome cohort), and each row becomes a labelled example whose
history is the person's patient sequence cut strictly before the index date (histories.py).
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path

import pandas as pd

from cehrgpt_tutorials.errors import PipelineError

COHORT_SQL_DIR = Path(__file__).resolve().parent / "cohorts"
DEFAULT_COHORT_SQL = COHORT_SQL_DIR / "er_visit_within_365_days.sql"
COHORT_COLUMNS = ("subject_id", "cohort_start_date", "cohort_end_date", "outcome_date")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quoted_identifier(name: str, what: str) -> str:
    """A schema name safe to put into SQL: plain identifiers only (no quoting games with user input)."""
    if not IDENTIFIER.match(name):
        raise PipelineError(f"{what} must be a plain SQL identifier (letters, digits, _), got {name!r}")
    return f'"{name}"'


def render_cohort_sql(text: str, cdm_schema: str) -> str:
    """The cohort SQL with @cdm_schema replaced (OHDSI SqlRender's convention) and no trailing ';'."""
    body = re.sub(r"--[^\n]*", "", text).strip()  # comments out, so a ';' in one does not count
    body = body.rstrip().rstrip(";").rstrip()
    if not body:
        raise PipelineError("the cohort SQL is empty")
    if ";" in body:
        raise PipelineError("the cohort SQL must be a single SELECT (it contains ';' before its end)")
    return body.replace("@cdm_schema", quoted_identifier(cdm_schema, "--cdm-schema"))


def one_line(error) -> str:
    """A PostgreSQL error as one line: the server's message, without "ERROR:" and the LINE/caret context."""
    diagnostics = getattr(error, "diag", None)
    message = (diagnostics.message_primary if diagnostics is not None else None) or str(error)
    return " ".join(message.strip().splitlines()[0].split()) if message.strip() else type(error).__name__


CDM_TABLE_REFERENCE = re.compile(r"@cdm_schema\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def tables_without_person_index(connection, sql: str, cdm_schema: str) -> list[str]:
    """The tables the cohort SQL reads (@cdm_schema.<table>) that have a person_id column but no index
    whose first column is person_id (OHDSI's index set has one on every event table; load_omop.py
    creates it, a user's own CDM may lack it). Views and tables that do not exist are not reported."""
    names = sorted({name.lower() for name in CDM_TABLE_REFERENCE.findall(re.sub(r"--[^\n]*", "", sql))})
    if not names:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'person_id' AND NOT a.attisdropped "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'm') "
            "AND NOT EXISTS (SELECT 1 FROM pg_index AS i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum) "
            "ORDER BY c.relname",
            (cdm_schema, names),
        )
        return [row[0] for row in cursor.fetchall()]


def warn_unindexed(connection, sql: str, cdm_schema: str) -> None:
    """One warning line on stderr when tables the cohort reads have no person_id index."""
    unindexed = tables_without_person_index(connection, sql, cdm_schema)
    if unindexed:
        tables = ", ".join(f"{cdm_schema}.{name}" for name in unindexed)
        print(f"warning: {tables} {'has' if len(unindexed) == 1 else 'have'} no index on person_id: the cohort "
              "may be slow on a large CDM (OHDSI's CommonDataModel OMOPCDM_postgresql_5.4_indices.sql creates "
              "them; load_omop.py does)", file=sys.stderr, flush=True)


def query_cohort(connection, sql: str, cdm_schema: str, sql_name: str) -> pd.DataFrame:
    """Run the cohort SQL; return its rows with the person's birth date, checked, with label and age.
    Warns in one line when the tables it reads have no person_id index (warn_unindexed).

    Raises PipelineError with one line for SQL errors, missing columns, no rows and bad rows.
    """
    import psycopg2

    body = render_cohort_sql(sql, cdm_schema)
    cdm = quoted_identifier(cdm_schema, "--cdm-schema")
    try:
        warn_unindexed(connection, sql, cdm_schema)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM ({body}) AS cohort_sql LIMIT 0")
            columns = [column.name for column in cursor.description]
            missing = [name for name in COHORT_COLUMNS if name not in columns]
            if missing:
                raise PipelineError(
                    f"the cohort SQL in {sql_name} lacks the column(s) {', '.join(missing)} (it returns "
                    f"{', '.join(columns)}); it must return {', '.join(COHORT_COLUMNS)}"
                )
            # Ordered: the rows' order is the examples' order, on which the cross-validation folds and
            # the fine-tuning's validation patients depend; unordered, it is whatever plan PostgreSQL
            # picks, and it changed between two runs of one cohort (the same SQL, the same server).
            cursor.execute(
                f"SELECT c.subject_id::bigint, c.cohort_start_date::date, c.cohort_end_date::date, "
                f"c.outcome_date::date, p.year_of_birth, p.month_of_birth, p.day_of_birth "
                f"FROM ({body}) AS c LEFT JOIN {cdm}.person AS p ON p.person_id = c.subject_id "
                f"ORDER BY 1, 2"
            )
            rows = cursor.fetchall()
    except psycopg2.Error as error:
        connection.rollback()
        raise PipelineError(f"the cohort SQL in {sql_name} failed: {one_line(error)}") from None
    if not rows:
        raise PipelineError(f"the cohort SQL in {sql_name} returned no rows: nothing to predict")
    cohort = pd.DataFrame(rows, columns=[*COHORT_COLUMNS, "year_of_birth", "month_of_birth", "day_of_birth"])
    return checked_cohort(cohort, sql_name)


def checked_cohort(cohort: pd.DataFrame, sql_name: str) -> pd.DataFrame:
    """Validate the rows and add label (0/1) and age_at_index (whole years)."""
    for name in ("subject_id", "cohort_start_date", "cohort_end_date"):
        if cohort[name].isna().any():
            missing = int(cohort[name].isna().sum())
            raise PipelineError(f"the cohort SQL in {sql_name} returned {missing} rows without {name}")
    if cohort["year_of_birth"].isna().any():
        unknown = cohort.loc[cohort["year_of_birth"].isna(), "subject_id"].head(3).tolist()
        raise PipelineError(f"the cohort SQL in {sql_name} returned persons missing from the person table "
                            f"(or without year_of_birth), e.g. subject_id {unknown}")
    backwards = cohort["cohort_end_date"] < cohort["cohort_start_date"]
    if backwards.any():
        raise PipelineError(f"the cohort SQL in {sql_name} returned {int(backwards.sum())} rows whose cohort_end_date "
                            "is before their cohort_start_date")
    duplicated = cohort.duplicated(["subject_id", "cohort_start_date"])
    if duplicated.any():
        raise PipelineError(f"the cohort SQL in {sql_name} returned {int(duplicated.sum())} duplicate "
                            "(subject_id, cohort_start_date) rows")
    has_outcome = cohort["outcome_date"].notna()
    outside = has_outcome & ((cohort["outcome_date"] < cohort["cohort_start_date"])
                             | (cohort["outcome_date"] > cohort["cohort_end_date"]))
    if outside.any():
        raise PipelineError(f"the cohort SQL in {sql_name} returned {int(outside.sum())} outcome_date values outside "
                            "[cohort_start_date, cohort_end_date]: return NULL for outcomes outside the time at risk")
    cohort = cohort.copy()
    cohort["label"] = has_outcome.astype(int)
    cohort["age_at_index"] = [
        age_in_years(int(year), month, day, start)
        for year, month, day, start in zip(cohort["year_of_birth"], cohort["month_of_birth"],
                                           cohort["day_of_birth"], cohort["cohort_start_date"], strict=True)
    ]
    return cohort.drop(columns=["year_of_birth", "month_of_birth", "day_of_birth"])


def age_in_years(year: int, month, day, on: datetime.date) -> int:
    """Whole years from the birth date (month and day default to 1, as OMOP allows them missing)."""
    month = int(month) if pd.notna(month) else 1
    day = int(day) if pd.notna(day) else 1
    return on.year - year - ((on.month, on.day) < (month, day))


def write_cohort_table(connection, cohort: pd.DataFrame, schema: str, cohort_id: int) -> None:
    """Write the target cohort (cohort_id) and the outcome cohort (cohort_id + 1) into schema.cohort.

    OHDSI's results layout: cohort(cohort_definition_id, subject_id, cohort_start_date, cohort_end_date).
    The outcome cohort holds one row per outcome in the time at risk, on its date. Earlier rows of
    these two cohort ids are replaced, in one transaction; other cohorts in the table are left alone.
    """
    import psycopg2
    from psycopg2.extras import execute_values

    table = f"{quoted_identifier(schema, '--cohort-schema')}.cohort"
    target = [(cohort_id, int(s), a, b) for s, a, b in
              zip(cohort["subject_id"], cohort["cohort_start_date"], cohort["cohort_end_date"], strict=True)]
    positives = cohort[cohort["label"] == 1]
    outcome = [(cohort_id + 1, int(s), d, d)
               for s, d in zip(positives["subject_id"], positives["outcome_date"], strict=True)]
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted_identifier(schema, '--cohort-schema')}")
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (cohort_definition_id integer NOT NULL, "
                "subject_id bigint NOT NULL, cohort_start_date date NOT NULL, cohort_end_date date NOT NULL)"
            )
            cursor.execute(f"DELETE FROM {table} WHERE cohort_definition_id IN (%s, %s)", (cohort_id, cohort_id + 1))
            execute_values(cursor, f"INSERT INTO {table} VALUES %s", target + outcome, page_size=5000)
    except psycopg2.Error as error:
        raise PipelineError(f"cannot write the cohort table {schema}.cohort: {one_line(error)}") from None
