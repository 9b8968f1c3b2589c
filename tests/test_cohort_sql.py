"""Step 7's cohort SQL at scale: set-based cohorts with the old per-row SQL's rows, plans without a
per-row scan of an event table, OHDSI's indexes built by the load, and step 7's warning when a CDM
lacks them.

The old SQL (a correlated subquery per cohort row, quadratic in the CDM) is kept below as the
reference the new SQL must agree with, rendered as cohort.py renders any cohort SQL.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import REPO_ROOT
from helpers import execute, query, start_in_own_group

from cehrgpt_tutorials.omop.cdm_schema import CDM_INDEXES, CDM_TABLES
from cehrgpt_tutorials.prediction import cohort as cohorts

TASKS = ["er_visit_within_365_days", "acute_care_within_730_days", "respiratory_infection_within_365_days",
         "cardiometabolic_onset_within_1825_days"]
EVENT_TABLES = {table for table, columns in CDM_TABLES.items() if "person_id" in dict(columns)}
INDEX_LINE = re.compile(r"^indexes: (\d+) created in \d+(\.\d+)? s\b", re.MULTILINE)

INDEX_VISIT = """WITH index_visit AS (
    SELECT person_id, MIN(visit_start_date) AS visit_date
    FROM @cdm_schema.visit_occurrence
    WHERE visit_concept_id = 9202
      AND visit_start_date BETWEEN DATE '2010-01-01' AND DATE '2016-12-31'
    GROUP BY person_id
)
"""

# The cohort SQL files as they were before they became set-based (the same text, comments aside).
OLD_SQL = {
    "er_visit_within_365_days": INDEX_VISIT + """
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 365 AS cohort_end_date,
       (SELECT MIN(er.visit_start_date)
        FROM @cdm_schema.visit_occurrence AS er
        WHERE er.person_id = index_visit.person_id
          AND er.visit_concept_id = 9203
          AND er.visit_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 365
       ) AS outcome_date
FROM index_visit
""",
    "acute_care_within_730_days": INDEX_VISIT + """
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 730 AS cohort_end_date,
       (SELECT MIN(acute.visit_start_date)
        FROM @cdm_schema.visit_occurrence AS acute
        WHERE acute.person_id = index_visit.person_id
          AND acute.visit_concept_id IN (9203, 9201)
          AND acute.visit_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 730
       ) AS outcome_date
FROM index_visit
""",
    "respiratory_infection_within_365_days": INDEX_VISIT + """
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 365 AS cohort_end_date,
       (SELECT MIN(infection.condition_start_date)
        FROM @cdm_schema.condition_occurrence AS infection
        WHERE infection.person_id = index_visit.person_id
          AND infection.condition_concept_id IN (40481087, 4112343, 260139, 28060, 372328, 4283893, 4294548, 255848)
          AND infection.condition_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 365
       ) AS outcome_date
FROM index_visit
""",
    "cardiometabolic_onset_within_1825_days": INDEX_VISIT + """
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 1825 AS cohort_end_date,
       (SELECT MIN(onset.condition_start_date)
        FROM @cdm_schema.condition_occurrence AS onset
        WHERE onset.person_id = index_visit.person_id
          AND onset.condition_concept_id IN (201826, 317576, 381316, 313217, 436940, 4329847)
          AND onset.condition_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 1825
       ) AS outcome_date
FROM index_visit
WHERE NOT EXISTS (
    SELECT 1 FROM @cdm_schema.condition_occurrence AS prior
    WHERE prior.person_id = index_visit.person_id
      AND prior.condition_concept_id IN (201826, 317576, 381316, 313217, 436940, 4329847)
      AND prior.condition_start_date <= index_visit.visit_date
)
""",
}


def new_sql(task: str) -> str:
    return (cohorts.COHORT_SQL_DIR / f"{task}.sql").read_text()


def cohort_rows(uri: str, sql: str, schema: str) -> list[tuple]:
    body = cohorts.render_cohort_sql(sql, schema)
    return query(uri, f"SELECT subject_id, cohort_start_date, cohort_end_date, outcome_date FROM ({body}) AS c "
                      "ORDER BY subject_id, cohort_start_date")


def plan_of(uri: str, sql: str, schema: str) -> dict:
    (plan,), = query(uri, f"EXPLAIN (FORMAT JSON) {cohorts.render_cohort_sql(sql, schema)}")
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]


def nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def event_tables_scanned(plan: dict) -> set[str]:
    return {node["Relation Name"] for node in nodes(plan) if node.get("Relation Name") in EVENT_TABLES}


def per_row_scans(plan: dict) -> list[str]:
    """The event tables the plan reads again for each row of something else: inside a SubPlan (a
    correlated subquery), or by a sequential scan on the inner side of a nested loop."""
    found = []
    for node in nodes(plan):
        if node.get("Parent Relationship") == "SubPlan":
            found += [f"SubPlan over {name}" for name in sorted(event_tables_scanned(node))]
        if node["Node Type"] == "Nested Loop":
            inner = [child for child in node.get("Plans", []) if child.get("Parent Relationship") == "Inner"]
            found += [f"Nested Loop over a Seq Scan on {scan['Relation Name']}" for child in inner
                      for scan in nodes(child)
                      if scan["Node Type"] == "Seq Scan" and scan.get("Relation Name") in EVENT_TABLES]
    return found


# ---------------------------------------------------------------------------------------------
# The same rows as the old SQL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_the_set_based_cohort_returns_the_old_sqls_rows_on_the_demo(task, demo_cdm):
    old = cohort_rows(demo_cdm["uri"], OLD_SQL[task], demo_cdm["schema"])
    new = cohort_rows(demo_cdm["uri"], new_sql(task), demo_cdm["schema"])
    assert len(old) > 500 and any(row[3] is not None for row in old), len(old)
    assert new == old


EDGE_SCHEMA = "cohort_edge_cases"
V = "DATE '2012-03-01'"  # the index visit of most edge-case persons


@pytest.fixture(scope="module")
def edge_case_cdm(pg_server):
    """Persons at every boundary the cohorts draw: outcomes on the index visit's day, on the index date,
    on the last and the first day after the time at risk, undated events, index visits at the ends of
    2010-2016 and outside it, a prior diagnosis on the index visit's day."""
    import psycopg2
    from psycopg2 import sql as psql

    from cehrgpt_tutorials.omop.load import create_table_statement

    with psycopg2.connect(pg_server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {EDGE_SCHEMA} CASCADE; CREATE SCHEMA {EDGE_SCHEMA}")
        for table in ("person", "visit_occurrence", "condition_occurrence"):
            cursor.execute(create_table_statement(EDGE_SCHEMA, table))
        cursor.execute(psql.SQL("INSERT INTO {}.person (person_id, year_of_birth) "
                                "SELECT g, 1970 FROM generate_series(1, 12) AS g").format(psql.Identifier(EDGE_SCHEMA)))
        visits = [  # person, concept, date
            (1, 9202, V), (1, 9203, V), (1, 9203, f"{V} + 1"),
            (2, 9202, V), (2, 9203, f"{V} + 365"), (2, 9201, f"{V} + 730"), (2, 9203, f"{V} + 731"),
            (3, 9202, "DATE '2009-12-31'"), (3, 9202, "DATE '2010-01-01'"), (3, 9202, "DATE '2016-12-31'"),
            (3, 9203, "DATE '2010-12-31'"), (3, 9201, "DATE '2011-01-01'"),
            (4, 9202, "DATE '2017-01-01'"), (4, 9203, "DATE '2017-02-01'"),
            (5, 9202, V), (5, 9203, "NULL"), (5, 9203, f"{V} + 366"), (5, 9201, f"{V} + 731"),
            (6, 9202, V), (7, 9202, V), (8, 9202, V), (9, 9202, V), (10, 9202, "NULL"), (11, 9202, "DATE '2016-12-31'"),
            (11, 9201, "DATE '2016-12-31' + 730"), (12, 9203, V),
        ]
        conditions = [
            (1, 201826, V), (1, 40481087, V),  # on the index visit's day: history, so excluded / not an outcome
            (2, 201826, f"{V} + 1"), (2, 40481087, f"{V} + 365"), (2, 4112343, f"{V} + 2"),
            (3, 317576, "DATE '2010-01-01' + 1826"), (3, 255848, "DATE '2010-01-01' + 366"),
            (5, 201826, "NULL"), (5, 201826, f"{V} - 10"), (5, 28060, "NULL"),
            (6, 201826, "NULL"),  # an undated diagnosis only: kept, no outcome
            (7, 381316, f"{V} + 1825"), (7, 4329847, f"{V} + 1826"), (7, 313217, f"{V} + 3000"),
            (8, 436940, f"{V} + 1826"), (8, 201826, f"{V} - 1"),
            (9, 999, f"{V} + 5"), (9, 372328, f"{V} + 366"),
            (11, 4329847, "DATE '2016-12-31' + 1825"),
        ]
        values = ", ".join(f"({index}, {person}, {concept}, {date})" for index, (person, concept, date) in
                           enumerate(visits, start=1))
        cursor.execute(f"INSERT INTO {EDGE_SCHEMA}.visit_occurrence (visit_occurrence_id, person_id, "
                       f"visit_concept_id, visit_start_date) VALUES {values}")
        values = ", ".join(f"({index}, {person}, {concept}, {date})" for index, (person, concept, date) in
                           enumerate(conditions, start=1))
        cursor.execute(f"INSERT INTO {EDGE_SCHEMA}.condition_occurrence (condition_occurrence_id, person_id, "
                       f"condition_concept_id, condition_start_date) VALUES {values}")
    yield pg_server
    execute(pg_server, f"DROP SCHEMA {EDGE_SCHEMA} CASCADE")


@pytest.mark.parametrize("task", TASKS)
def test_the_set_based_cohort_returns_the_old_sqls_rows_at_the_boundaries(task, edge_case_cdm):
    old = cohort_rows(edge_case_cdm, OLD_SQL[task], EDGE_SCHEMA)
    new = cohort_rows(edge_case_cdm, new_sql(task), EDGE_SCHEMA)
    assert any(row[3] is not None for row in old) and any(row[3] is None for row in old), old
    assert new == old


# ---------------------------------------------------------------------------------------------
# Plans: no event table read again per cohort row
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_the_cohorts_plan_has_no_subplan_over_an_event_table(task, demo_cdm):
    plan = plan_of(demo_cdm["uri"], new_sql(task), demo_cdm["schema"])
    assert event_tables_scanned(plan), plan  # the walk sees the plan's scans
    assert not [scan for scan in per_row_scans(plan) if scan.startswith("SubPlan")], json.dumps(plan, indent=1)


@pytest.mark.parametrize("task", TASKS)
def test_the_cohorts_plan_on_the_loaded_demo_reads_no_event_table_per_row(task, demo_cdm):
    """With the load's statistics the planner knows the cohort's size, so it joins instead of looping
    over the events once per index visit (a nested loop with a sequential scan inside)."""
    plan = plan_of(demo_cdm["uri"], new_sql(task), demo_cdm["schema"])
    assert not per_row_scans(plan), json.dumps(plan, indent=1)


# ---------------------------------------------------------------------------------------------
# The load's indexes
# ---------------------------------------------------------------------------------------------


def indexes_of(uri: str, schema: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(table, index name) -> its columns, for the non-unique indexes of schema's tables."""
    rows = query(uri, "SELECT t.relname, i.relname, array_agg(a.attname ORDER BY k.position) "
                      "FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid "
                      "JOIN pg_class AS t ON t.oid = x.indrelid JOIN pg_namespace AS n ON n.oid = t.relnamespace "
                      "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, position) "
                      "JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                      "WHERE n.nspname = %s AND NOT x.indisunique GROUP BY 1, 2", (schema,))
    return {(table, name): tuple(columns) for table, name, columns in rows}


def tables_of(uri: str, schema: str) -> set[str]:
    return {row[0] for row in query(uri, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


def test_the_load_creates_ohdsis_indexes_and_prints_their_cost(demo_cdm):
    expected = {(table, name): columns for table in tables_of(demo_cdm["uri"], demo_cdm["schema"])
                for name, columns in CDM_INDEXES.get(table, [])}
    assert indexes_of(demo_cdm["uri"], demo_cdm["schema"]) == expected
    line = INDEX_LINE.search(demo_cdm["stdout"])
    assert line and int(line.group(1)) == len(expected), demo_cdm["stdout"]


def test_every_event_table_the_demo_load_creates_has_an_index_on_person_id_first(demo_cdm):
    loaded = tables_of(demo_cdm["uri"], demo_cdm["schema"]) & EVENT_TABLES
    first_columns = {(row[0], row[1]) for row in query(
        demo_cdm["uri"], "SELECT tablename, substring(indexdef from '\\(([a-z_]+)') FROM pg_indexes "
                         "WHERE schemaname = %s", (demo_cdm["schema"],))}
    assert {"visit_occurrence", "condition_occurrence", "measurement", "death", "observation_period"} <= loaded
    assert {table for table in loaded if (table, "person_id") not in first_columns} == set()


def test_the_load_builds_the_indexes_in_its_staging_schema_before_the_swap(pg_server, pipeline_env):
    """Killed just before the swap, the load leaves its staging schema: the indexes are already there."""
    schema = "cohort_index_staging"
    environment = {**pipeline_env, "CEHRGPT_CRASH_AT": "load:before-swap"}
    process = start_in_own_group([sys.executable, REPO_ROOT / "load_omop.py", "--demo", "--schema", schema,
                                  "--max-persons", "50", "--dsn", pg_server], environment)
    output = process.communicate(timeout=300)[0]
    try:
        assert process.returncode == -9, output
        assert INDEX_LINE.search(output), output
        staged = indexes_of(pg_server, f"{schema}__loading")
        assert ("visit_occurrence", "idx_visit_person_id_1") in staged, (output, staged)
        assert not tables_of(pg_server, schema)
    finally:
        execute(pg_server, f"DROP SCHEMA IF EXISTS {schema}__loading CASCADE; DROP SCHEMA IF EXISTS {schema} CASCADE")


# ---------------------------------------------------------------------------------------------
# Step 7's warning for a CDM without them
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unindexed_cdm(demo_cdm):
    """The demo's person, visit and condition tables copied without any index (a user's own CDM)."""
    schema = "cohort_unindexed"
    execute(demo_cdm["uri"], f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; " + " ".join(
        f"CREATE TABLE {schema}.{table} AS TABLE {demo_cdm['schema']}.{table}; ANALYZE {schema}.{table};"
        for table in ("person", "visit_occurrence", "condition_occurrence")))
    yield {"uri": demo_cdm["uri"], "schema": schema}
    execute(demo_cdm["uri"], f"DROP SCHEMA {schema} CASCADE")


def run_cohort(uri: str, schema: str, task: str):
    import psycopg2

    connection = psycopg2.connect(uri)
    try:
        return cohorts.query_cohort(connection, new_sql(task), schema, f"{task}.sql")
    finally:
        connection.close()


@pytest.mark.parametrize("task, unindexed", [("er_visit_within_365_days", "visit_occurrence"),
                                             ("respiratory_infection_within_365_days",
                                              "condition_occurrence, cohort_unindexed.visit_occurrence")])
def test_step7_warns_in_one_line_when_the_cohorts_tables_have_no_person_id_index(task, unindexed, unindexed_cdm,
                                                                                capsys):
    cohort = run_cohort(unindexed_cdm["uri"], unindexed_cdm["schema"], task)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: cohort_unindexed.{unindexed} ")
    assert "person_id" in lines[0] and captured.out == ""
    assert len(cohort) > 500


@pytest.mark.parametrize("task", TASKS)
def test_step7_says_nothing_of_indexes_on_the_loaded_demo(task, demo_cdm, capsys):
    run_cohort(demo_cdm["uri"], demo_cdm["schema"], task)
    assert capsys.readouterr().err == ""


def test_cdm_indexes_have_unique_names_real_columns_and_a_person_id_index_per_event_table():
    names = [name for indexes in CDM_INDEXES.values() for name, _ in indexes]
    assert len(names) == len(set(names))
    assert {(table, column) for table, indexes in CDM_INDEXES.items() for _, columns in indexes for column in columns
            if column not in dict(CDM_TABLES[table])} == set()
    assert {table for table in EVENT_TABLES - {"person"}
            if not any(columns[0] == "person_id" for _, columns in CDM_INDEXES[table])} == set()
