"""cehrgpt_tutorials.omop.plausibility: each Data-Quality-Dashboard-style check counts exactly the records
planted to break it, on a real PostgreSQL server."""

from __future__ import annotations

import datetime

import psycopg2
from conftest import run_script

from cehrgpt_tutorials.omop.plausibility import CHECKS, run_checks

PLANTED = """
DROP SCHEMA IF EXISTS plausibility_case CASCADE;
CREATE SCHEMA plausibility_case;
SET search_path TO plausibility_case;
CREATE TABLE person (person_id integer PRIMARY KEY, year_of_birth integer);
CREATE TABLE observation_period (observation_period_id integer, person_id integer,
    observation_period_start_date date, observation_period_end_date date);
CREATE TABLE visit_occurrence (visit_occurrence_id integer, person_id integer, visit_start_date date, visit_end_date date);
CREATE TABLE condition_occurrence (condition_occurrence_id integer, person_id integer, condition_start_date date,
    visit_occurrence_id integer);
CREATE TABLE death (person_id integer, death_date date);
INSERT INTO person VALUES (1, 1980), (2, 1990);
INSERT INTO observation_period VALUES (1, 1, '2000-01-01', '2010-12-31'), (2, 2, '1995-01-01', '2019-01-01');
INSERT INTO visit_occurrence VALUES
    (10, 1, '2005-03-01', '2005-03-02'),  -- fine
    (11, 1, '2011-06-01', '2011-06-01'),  -- outside person 1's observation period
    (12, 2, '1989-05-01', '1989-05-01'),  -- before birth, and outside the observation period
    (13, 2, '2018-12-01', '2018-12-03');  -- fine, then person 2 dies on 2018-12-03
INSERT INTO condition_occurrence VALUES
    (20, 1, '2005-03-01', 10),            -- fine
    (21, 3, '2005-03-01', 10),            -- no such person
    (22, 1, '2005-03-01', 99),            -- no such visit
    (23, 2, '2019-02-15', 13);            -- 74 days after death
INSERT INTO death VALUES (2, '2018-12-03');
"""


def test_each_check_counts_the_records_planted_to_break_it(pg_server):
    with psycopg2.connect(pg_server) as connection:
        with connection.cursor() as cursor:
            cursor.execute(PLANTED)
        counts = run_checks(connection, "plausibility_case", datetime.date(2011, 1, 1))
    assert counts == {
        "visits_outside_observation_period": 2,
        "events_before_birth": 1,
        "events_over_30_days_after_death": 1,
        "visits_after_source_end": 2,  # visits 11 (2011-06-01) and 13 (2018) start after 2011-01-01
        "events_without_person": 1,
        "events_without_visit": 1,
    }
    assert set(counts) == set(CHECKS)


def test_the_command_prints_both_schemas_and_names_a_missing_one(pg_server, pipeline_env):
    with psycopg2.connect(pg_server) as connection, connection.cursor() as cursor:
        cursor.execute(PLANTED)
    result = run_script(["-m", "cehrgpt_tutorials.omop.plausibility", "--schema", "plausibility_case",
                         "--source-schema", "plausibility_case", "--dsn", pg_server], pipeline_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "source's last visit 2018-12-01" in result.stdout
    assert any(line.split() == ["visits_outside_observation_period", "2", "2"] for line in result.stdout.splitlines())
    missing = run_script(["-m", "cehrgpt_tutorials.omop.plausibility", "--schema", "nowhere", "--dsn", pg_server],
                         pipeline_env, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: schema nowhere has no visit_occurrence table: load it first"
