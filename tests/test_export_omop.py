"""export_omop.py, PostgreSQL -> Parquet (real PostgreSQL from the pg_server fixture, real Spark).

The tables are made here with SQL in schemas of our own (cdm_export_*), so these tests do not depend on
load_omop.py. The database itself is the oracle: values read back from Parquet are compared with what
psycopg2 reads from the same table.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, run_script
from helpers import error_line, execute, file_contents, frozen, query, signal_when, visible_names, wait_for
from psycopg2 import sql

SCHEMA = "cdm_export_test"
BIG_ROWS = 300_000

TYPES_TABLE = f"""
CREATE TABLE {SCHEMA}.all_types (
    id integer NOT NULL,
    big bigint,
    small smallint,
    day date,
    moment timestamp,
    moment_tz timestamptz,
    amount numeric,
    price numeric(10, 2),
    real_value real,
    double_value double precision,
    flag boolean,
    code varchar(50),
    note text,
    null_date date,
    null_timestamp timestamp,
    null_integer integer,
    null_bigint bigint,
    null_numeric numeric,
    null_varchar varchar(20),
    null_boolean boolean
);
INSERT INTO {SCHEMA}.all_types (id, big, small, day, moment, moment_tz, amount, price, real_value,
                                double_value, flag, code, note) VALUES
    (1, 9223372036854775807, 32767, '1850-03-04', '1850-03-04 10:11:12.123456', '1850-03-04 10:11:12+00',
     12345678.125, 99999999.99, 1.5, 0.1, true, '', 'comma, "quotes" and
a newline'),
    (2, -9223372036854775808, -32768, '0001-01-01', '1899-12-31 23:59:59', '1970-01-01 00:00:00+00',
     -0.5, 0, -2.25, 1e300, false, NULL, ''),
    (3, NULL, NULL, '9999-12-31', '2024-02-29 00:00:00.000001', '2024-02-29 12:00:00-05', NULL, NULL, NULL,
     NULL, NULL, 'héllo wörld — 中文 😀', '"'),
    (4, 0, 0, NULL, NULL, NULL, 1e-10, NULL, NULL, NULL, NULL, ',', E'tab\\there\\r\\nand back\\\\slash'),
    (2147483647, 1, 1, '1900-01-01', '1900-01-01 00:00:00', NULL, NULL, NULL, NULL, NULL, NULL, ' ', 'NULL');
"""

EXPECTED_ARROW_TYPES = {
    "id": pa.int32(),
    "big": pa.int64(),
    "small": pa.int16(),
    "day": pa.date32(),
    "moment": pa.timestamp("us"),
    "moment_tz": pa.timestamp("us", tz="UTC"),
    "amount": pa.float64(),
    "price": pa.float64(),
    "real_value": pa.float32(),
    "double_value": pa.float64(),
    "flag": pa.bool_(),
    "code": pa.string(),
    "note": pa.string(),
    "null_date": pa.date32(),
    "null_timestamp": pa.timestamp("us"),
    "null_integer": pa.int32(),
    "null_bigint": pa.int64(),
    "null_numeric": pa.float64(),
    "null_varchar": pa.string(),
    "null_boolean": pa.bool_(),
}

SETUP_SQL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
{TYPES_TABLE}
CREATE TABLE {SCHEMA}.empty_table (person_id bigint, condition_start_date date, stop_reason varchar(20));
CREATE TABLE {SCHEMA}.single_text (value text);
INSERT INTO {SCHEMA}.single_text VALUES (NULL), (''), (NULL), ('x');
CREATE TABLE {SCHEMA}.numbered (n integer, label text);
INSERT INTO {SCHEMA}.numbered SELECT i, 'row ' || i FROM generate_series(1, 2500) i;
CREATE TABLE {SCHEMA}."Odd ""Quoted"" Table" ("Weird Col" integer, "UPPER" text);
INSERT INTO {SCHEMA}."Odd ""Quoted"" Table" VALUES (1, 'a'), (2, NULL);
CREATE TABLE {SCHEMA}."bad/name" (a integer);
CREATE VIEW {SCHEMA}.infinite_dates AS SELECT 1 AS id, 'infinity'::date AS day;
CREATE TABLE {SCHEMA}.big (id integer, person_id integer, start_date date, payload text);
INSERT INTO {SCHEMA}.big SELECT i, i % 1000, DATE '1900-01-01' + i % 40000, repeat(md5(i::text), 3)
    FROM generate_series(1, {BIG_ROWS}) i;
CREATE TABLE {SCHEMA}.person (person_id integer PRIMARY KEY, padding text);
CREATE TABLE {SCHEMA}.visit_occurrence (visit_occurrence_id integer, person_id integer);
INSERT INTO {SCHEMA}.person SELECT i, repeat('p', 200) FROM generate_series(1, 20000) i;
INSERT INTO {SCHEMA}.visit_occurrence SELECT i, i FROM generate_series(1, 20000) i;
ANALYZE;
"""


@pytest.fixture(scope="module")
def database(pg_server) -> str:
    execute(pg_server, SETUP_SQL)
    return pg_server


@pytest.fixture
def env(pipeline_env, tmp_path) -> dict[str, str]:
    environment = dict(pipeline_env)
    environment["OMOP_DIR"] = str(tmp_path / "omop")
    return environment


def export(database: str, env: dict, output: Path, *arguments: str, schema: str = SCHEMA, timeout: float = 300):
    return run_script(
        ["export_omop.py", "--dsn", database, "--schema", schema, "--output-dir", str(output), *arguments],
        env,
        timeout=timeout,
    )


def assert_failed_cleanly(result, *fragments: str) -> str:
    """Non-zero exit, exactly one line on stderr that says what is wrong, no success line, no traceback."""
    line = error_line(result, returncode=None, alone=True)
    assert "exported" not in result.stdout and "total" not in result.stdout, result.stdout
    for fragment in fragments:
        assert fragment in line, line
    return line


def python_value(value):
    """psycopg2's value as the Parquet reader should give it back (numeric is exported as double)."""
    return float(value) if isinstance(value, Decimal) else value


# --------------------------------------------------------------------------------------------------
# Values and types
# --------------------------------------------------------------------------------------------------


def test_every_type_round_trips_with_catalog_types(database, env, tmp_path):
    output = tmp_path / "out"
    result = export(database, env, output, "--tables", "all_types,empty_table,single_text")
    assert result.returncode == 0, result.stderr
    assert "exported 3 tables" in result.stdout

    table = pq.read_table(output / "all_types")
    assert {field.name: field.type for field in table.schema} == EXPECTED_ARROW_TYPES
    columns = list(EXPECTED_ARROW_TYPES)
    expected = query(database, sql.SQL("SELECT {} FROM {}.all_types ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(SCHEMA)))
    rows = sorted(table.to_pylist(), key=lambda row: row["id"])
    assert len(rows) == len(expected) == 5
    for row, expected_row in zip(rows, expected, strict=True):
        for name, expected_value in zip(columns, expected_row, strict=True):
            value, wanted = row[name], python_value(expected_value)
            if name == "real_value" and wanted is not None:
                assert value == pytest.approx(wanted, rel=1e-7), name
            else:
                assert value == wanted, (name, row["id"], value, wanted)

    by_id = {row["id"]: row for row in rows}
    # The traps, spelled out: empty string is not NULL, text survives CSV quoting, old dates stay put.
    assert by_id[1]["code"] == "" and by_id[2]["code"] is None
    assert by_id[2]["note"] == "" and by_id[2147483647]["note"] == "NULL"
    assert by_id[1]["note"] == 'comma, "quotes" and\na newline'
    assert by_id[3]["code"] == "héllo wörld — 中文 😀" and by_id[3]["note"] == '"'
    assert by_id[4]["note"] == "tab\there\r\nand back\\slash"
    assert by_id[1]["day"].isoformat() == "1850-03-04"
    assert by_id[2]["day"].isoformat() == "0001-01-01"
    assert by_id[1]["moment"].isoformat() == "1850-03-04T10:11:12.123456"
    assert by_id[3]["moment_tz"].isoformat() == "2024-02-29T17:00:00+00:00"
    assert by_id[1]["amount"] == 12345678.125 and by_id[1]["price"] == 99999999.99
    # All-NULL columns keep their declared type (checked above) and are entirely null.
    for name in [column for column in columns if column.startswith("null_")]:
        assert table[name].null_count == len(rows)

    # Spark 3.1.2 reads nanosecond timestamps as bigint: the file itself must say microseconds.
    parquet_schema = pq.ParquetFile(next((output / "all_types").glob("part-*.parquet"))).schema
    assert "timeUnit=microseconds" in str(parquet_schema.column(columns.index("moment")).logical_type)

    empty = pq.read_table(output / "empty_table")
    assert empty.num_rows == 0
    assert empty.schema == pa.schema(
        [("person_id", pa.int64()), ("condition_start_date", pa.date32()), ("stop_reason", pa.string())]
    )
    # A one-column table whose rows are NULL: each NULL row is an empty CSV line, still a row.
    assert pq.read_table(output / "single_text")["value"].to_pylist() == [None, "", None, "x"]


def test_large_table_splits_into_part_files(database, env, tmp_path):
    output = tmp_path / "out"
    result = export(database, env, output, "--tables", "numbered", "--rows-per-file", "1000", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    parts = sorted((output / "numbered").glob("part-*.parquet"))
    assert [part.name for part in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(part).metadata.num_rows for part in parts] == [1000, 1000, 500]
    table = pq.read_table(output / "numbered")
    assert sorted(table["n"].to_pylist()) == list(range(1, 2501))
    assert visible_names(output) == ["numbered"]


def test_default_tables_and_nothing_else_touched(database, env, tmp_path):
    """A bare run: the embedded server, $OMOP_DIR, and the seed's eight tables plus death (measurement
    is absent here); nothing else in the output folder is touched."""
    schema = "cdm_export_defaults"
    names = ["person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
             "concept", "concept_ancestor", "concept_relationship", "death"]
    execute(database, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};" + "".join(
        f"CREATE TABLE {schema}.{name} (person_id integer); INSERT INTO {schema}.{name} VALUES (1);"
        for name in names))
    output = tmp_path / "omop"
    (output / "pgdata").mkdir(parents=True)
    (output / "pgdata" / "PG_VERSION").write_text("18\n")
    (output / "notes.txt").write_text("mine")
    # No --dsn, no PG* variables: the embedded server (here the fixture's, found already running).
    env["CEHRGPT_PGDATA"] = query(database, "SHOW data_directory")[0][0]
    result = run_script(["export_omop.py", "--schema", schema], env)  # writes to $OMOP_DIR
    assert result.stdout.startswith("PostgreSQL: postgresql://"), result.stdout
    assert result.returncode == 0, result.stderr
    assert visible_names(output) == sorted(names + ["notes.txt", "pgdata"])
    assert (output / "pgdata" / "PG_VERSION").read_text() == "18\n"
    assert (output / "notes.txt").read_text() == "mine"
    for name in names:
        assert pq.read_table(output / name)["person_id"].to_pylist() == [1]
    assert "measurement" not in result.stdout


def test_odd_names_are_quoted_or_rejected(database, env, tmp_path):
    output = tmp_path / "out"
    result = export(database, env, output, "--tables", 'Odd "Quoted" Table')
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output / 'odd "quoted" table')
    # Lower case, and Spark 3.1 cannot read a Parquet column named "weird col": it becomes weird_col.
    assert table.column_names == ["weird_col", "upper"]
    assert "'Weird Col' -> weird_col" in result.stdout
    assert sorted(table.to_pylist(), key=lambda row: row["weird_col"]) == [
        {"weird_col": 1, "upper": "a"}, {"weird_col": 2, "upper": None}]

    # A name that would be a path is refused, before anything is written.
    rejected = export(database, env, tmp_path / "out2", "--tables", "bad/name")
    assert_failed_cleanly(rejected, f"{SCHEMA}.bad/name", "folder")
    assert not (tmp_path / "out2").exists()

    # Names are looked up, never pasted into SQL.
    injected = export(database, env, tmp_path / "out3", "--tables", "person; DROP TABLE cdm_export_test.big")
    assert_failed_cleanly(injected, "not found")
    assert query(database, f"SELECT count(*) FROM {SCHEMA}.big") == [(BIG_ROWS,)]


# --------------------------------------------------------------------------------------------------
# Failures: one line, non-zero, nothing written, earlier export intact
# --------------------------------------------------------------------------------------------------


def test_missing_table_and_schema(database, env, tmp_path):
    output = tmp_path / "out"
    result = export(database, env, output, "--tables", "person,nope")
    line = assert_failed_cleanly(result, f"table {SCHEMA}.nope not found; tables in {SCHEMA}: ")
    assert "all_types" in line and "person" in line
    assert not output.exists()

    result = export(database, env, output, schema="no_such_schema")
    assert_failed_cleanly(result, "schema no_such_schema not found")
    assert not output.exists()


def test_a_refused_or_silent_server_is_one_error_line_not_a_wait(env, tmp_path):
    output = tmp_path / "out"
    result = export("host=127.0.0.1 port=1 dbname=omop user=nobody", env, output, timeout=120)
    assert_failed_cleanly(result, "cannot connect", "127.0.0.1", "port 1")
    assert not output.exists()

    # A server that takes the connection and never answers: libpq alone would wait for it for ever (the
    # subprocess timeout is the guard); the export's own connect timeout (no PGCONNECT_TIMEOUT set here:
    # its default) ends the wait, and it says so while this server still holds the connection open.
    assert not any(name.startswith("PG") for name in env)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        result = export(f"host=127.0.0.1 port={port} dbname=omop user=nobody", env, output, timeout=60)
    assert_failed_cleanly(result, "cannot connect", "127.0.0.1", f"port {port}", "timeout expired")
    assert not output.exists()


def test_a_wrong_password_is_one_error_line_that_does_not_print_it(database, env, tmp_path):
    """The fixture server trusts local connections: require a password for one role of our own."""
    role, secret = "export_password_test", "wrong-secret-4711"
    execute(database, f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'right-secret'")
    hba_file = Path(query(database, "SHOW hba_file")[0][0])
    original = hba_file.read_text()
    hba_file.write_text(f"local all {role} scram-sha-256\n" + original)
    execute(database, "SELECT pg_reload_conf()")
    try:
        dsn = psycopg2.extensions.make_dsn(database, user=role, password=secret)
        output = tmp_path / "out"
        result = export(dsn, env, output, timeout=120)
        line = assert_failed_cleanly(result, "cannot connect", "password authentication failed")
        assert secret not in result.stdout + result.stderr and "right-secret" not in line
        assert not output.exists()
    finally:
        hba_file.write_text(original)
        execute(database, "SELECT pg_reload_conf()")


def test_bad_value_names_table_and_column_and_keeps_earlier_export(database, env, tmp_path):
    output = tmp_path / "out"
    (output / "infinite_dates").mkdir(parents=True)
    pq.write_table(pa.table({"id": [7]}), output / "infinite_dates" / "part-00000.parquet")
    before = file_contents(output / "infinite_dates")
    result = export(database, env, output, "--tables", "numbered,infinite_dates", "--jobs", "2")
    assert_failed_cleanly(result, f"table {SCHEMA}.infinite_dates", "column day (date)", "infinity")
    assert file_contents(output / "infinite_dates") == before
    assert not [entry for entry in output.iterdir() if entry.name.startswith(".")]


def test_previous_export_left_mid_swap_is_put_back(database, env, tmp_path):
    """A run killed between the two renames of the swap leaves only .<table>.old-*: restore it, even
    when the new export then fails."""
    output = tmp_path / "out"
    stranded = output / ".infinite_dates.old-0123abcd"
    stranded.mkdir(parents=True)
    pq.write_table(pa.table({"id": [7]}), stranded / "part-00000.parquet")
    result = export(database, env, output, "--tables", "infinite_dates")
    assert_failed_cleanly(result, "infinity")
    assert [entry.name for entry in output.iterdir()] == ["infinite_dates"]
    assert pq.read_table(output / "infinite_dates")["id"].to_pylist() == [7]


def test_refuses_to_replace_a_folder_that_is_not_a_parquet_table(database, env, tmp_path):
    output = tmp_path / "out"
    (output / "numbered").mkdir(parents=True)
    (output / "numbered" / "PG_VERSION").write_text("18\n")
    result = export(database, env, output, "--tables", "numbered")
    assert_failed_cleanly(result, "numbered", "not overwriting")
    assert (output / "numbered" / "PG_VERSION").read_text() == "18\n"


def start_export(database: str, env: dict, output: Path, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "export_omop.py", "--dsn", database, "--schema", SCHEMA, "--output-dir", str(output),
         *arguments],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background job (`make test &`, nohup, some CI runners) starts with SIGINT ignored,
        # and children inherit that: Ctrl-C as a terminal sends it must reach the export.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def partial_table(output: Path, table: str, at_most: int | None = None) -> Path | None:
    """The hidden temporary folder of `table` once it holds a part file (the export is mid-table), and
    with at_most, no more than that many: the rest of the table is still to come."""
    for entry in output.glob(f".{table}.tmp-*"):
        parts = len(list(entry.glob("part-*.parquet")))
        if parts and (at_most is None or parts <= at_most):
            return entry
    return None


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_mid_table_keeps_previous_export(database, env, tmp_path, how):
    output = tmp_path / "out"
    first = export(database, env, output, "--tables", "big")
    assert first.returncode == 0, first.stderr
    previous = file_contents(output / "big")

    rows_per_file = 2500
    process = start_export(database, env, output, "--tables", "big", "--rows-per-file", str(rows_per_file),
                           "--jobs", "1")
    # Frozen first and checked again, with at most half of the table's part files written: the signal
    # lands with the rest of the table still to stream, so the export is interrupted mid-table however
    # busy the machine. (Frozen after its last part file, the worker thread could swap the table in
    # before the main thread, which alone handles signals, tells it to stop.)
    seen = []

    def mid_table() -> bool:
        # the last look is the one made while frozen
        seen[:] = [partial_table(output, "big", at_most=BIG_ROWS // rows_per_file // 2)]
        return seen[0] is not None

    signal_when(process, mid_table, getattr(signal, how), "a part file of big in its temporary folder",
                timeout=120, group=False)
    temporary = seen[0]
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode != 0
    assert "exported" not in stdout
    assert visible_names(output) == ["big"]  # nothing new that looks like a table
    assert file_contents(output / "big") == previous
    if how == "SIGINT":
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert error_line(result, returncode=130).startswith("error: interrupted"), stderr
        assert not temporary.exists(), "Ctrl-C must remove the temporary folder"
    else:
        assert process.returncode == -signal.SIGKILL
        assert temporary.exists()  # left by kill -9, but hidden from Spark (its name starts with a dot)
        # The next export cleans up what the killed one left and replaces the table.
        again = export(database, env, output, "--tables", "big")
        assert again.returncode == 0, again.stderr
        assert [entry.name for entry in output.iterdir()] == ["big"]
        assert pq.read_table(output / "big").num_rows == BIG_ROWS


# --------------------------------------------------------------------------------------------------
# One snapshot across connections
# --------------------------------------------------------------------------------------------------


def test_rows_committed_during_export_are_all_in_or_all_out(database, env, tmp_path):
    """A person + visit pair committed before the export is in both tables; one committed once the
    export has begun (its snapshot taken, a second connection opened) is in neither, though every table
    is read after it: without one shared snapshot, a connection whose reads start later would export the
    new pair in some tables and not in others (a visit without its person).
    """
    before, during = 1_000_000, 1_000_001

    def commit_pair(person_id: int) -> None:
        execute(database, f"INSERT INTO {SCHEMA}.person VALUES (%s, 'new'); "
                          f"INSERT INTO {SCHEMA}.visit_occurrence VALUES (%s, %s)", person_id, person_id, person_id)

    watcher = psycopg2.connect(database)
    watcher.autocommit = True

    def export_backends() -> int:
        """The export's connections (coordinator first; it has taken the snapshot before a worker opens)."""
        with watcher.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cehrgpt-export_omop'")
            return cursor.fetchone()[0]

    commit_pair(before)
    try:
        # 3 tables, 3 connections: no table is read before the last one is open and set up, so a pair
        # committed once the second is there commits before any read (the strongest test of sharing);
        # wherever it commits after the first statement, the shared snapshot must leave it out.
        process = start_export(database, env, tmp_path / "out", "--tables", "big,person,visit_occurrence",
                               "--jobs", "3")
        wait_for(lambda: export_backends() >= 2, process, "the export's second connection", timeout=120)
        with frozen(process, group=False):  # nothing of it runs while the pair commits
            commit_pair(during)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        watcher.close()
        execute(database, f"DELETE FROM {SCHEMA}.visit_occurrence WHERE person_id >= {before};"
                          f"DELETE FROM {SCHEMA}.person WHERE person_id >= {before}")
    assert process.returncode == 0, stderr
    persons = set(pq.read_table(tmp_path / "out" / "person")["person_id"].to_pylist())
    visits = pq.read_table(tmp_path / "out" / "visit_occurrence")["person_id"].to_pylist()
    assert set(visits) <= persons, "visits exported without their person"
    assert before in persons and before in visits
    assert during not in persons and during not in visits, "a row committed after the snapshot was exported"


# --------------------------------------------------------------------------------------------------
# Spark 3.1.2 reads what we wrote (one JVM for every table)
# --------------------------------------------------------------------------------------------------

SPARK_CHECK = textwrap.dedent(
    """
    import json, sys
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.appName("export-check").config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false").getOrCreate())
    report = {}
    for folder in sys.argv[2:]:
        frame = spark.read.parquet(f"{sys.argv[1]}/{folder}")
        rows = [row.asDict() for row in frame.collect()]
        report[folder] = {
            "types": {field.name: field.dataType.simpleString() for field in frame.schema.fields},
            "rows": json.loads(json.dumps(rows, default=lambda value: value.isoformat())),
        }
    print("SPARK_REPORT " + json.dumps(report))
    spark.stop()
    """
)


@pytest.mark.slow
def test_spark_reads_every_exported_table(database, env, tmp_path):
    output = tmp_path / "out"
    tables = ["all_types", "empty_table", "single_text", "numbered", 'Odd "Quoted" Table']
    result = export(database, env, output, "--tables", ",".join(tables), "--rows-per-file", "1000")
    assert result.returncode == 0, result.stderr
    script = tmp_path / "spark_check.py"
    script.write_text(SPARK_CHECK)
    folders = [name.lower() for name in tables]
    spark = subprocess.run([sys.executable, str(script), str(output), *folders], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert spark.returncode == 0, spark.stderr[-3000:]
    report = json.loads(next(line for line in spark.stdout.splitlines() if line.startswith("SPARK_REPORT "))[13:])

    assert report["all_types"]["types"] == {
        "id": "int", "big": "bigint", "small": "smallint", "day": "date", "moment": "timestamp",
        "moment_tz": "timestamp", "amount": "double", "price": "double", "real_value": "float",
        "double_value": "double", "flag": "boolean", "code": "string", "note": "string",
        "null_date": "date", "null_timestamp": "timestamp", "null_integer": "int", "null_bigint": "bigint",
        "null_numeric": "double", "null_varchar": "string", "null_boolean": "boolean",
    }
    rows = {row["id"]: row for row in report["all_types"]["rows"]}
    assert rows[1]["day"] == "1850-03-04" and rows[1]["moment"] == "1850-03-04T10:11:12.123456"
    assert rows[2]["day"] == "0001-01-01" and rows[2]["moment"] == "1899-12-31T23:59:59"
    assert rows[3]["day"] == "9999-12-31" and rows[3]["moment_tz"] == "2024-02-29T17:00:00"
    assert rows[2147483647]["day"] == "1900-01-01"
    assert rows[1]["code"] == "" and rows[2]["code"] is None and rows[1]["note"] == 'comma, "quotes" and\na newline'
    assert rows[2]["big"] == -9223372036854775808 and rows[1]["small"] == 32767
    assert math.isclose(rows[1]["amount"], 12345678.125)
    assert report["empty_table"]["types"] == {"person_id": "bigint", "condition_start_date": "date",
                                              "stop_reason": "string"}
    assert report["empty_table"]["rows"] == []
    assert sorted(row["n"] for row in report["numbered"]["rows"]) == list(range(1, 2501))
    assert sorted((row["value"] is None, row["value"]) for row in report["single_text"]["rows"]) == [
        (False, ""), (False, "x"), (True, None), (True, None)]
    assert report['odd "quoted" table']["types"] == {"weird_col": "int", "upper": "string"}
