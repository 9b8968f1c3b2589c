"""The prediction task: a cohort defined in SQL, its labels, and each patient's history before the index date.

A cohort SQL (see cohorts/er_visit_within_365_days.sql) returns one row per person and index date:
subject_id, cohort_start_date (the index date), cohort_end_date (the end of the time at risk) and
outcome_date (the first outcome in the time at risk, or NULL). The rows go into an OHDSI-style
`cohort` table (target cohort and outcome cohort), and each row becomes a labelled example whose
history is the person's patient sequence cut strictly before the index date.
"""

from __future__ import annotations

import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.sequences.split import DEFAULT_TEST_FRACTION, is_test_person
from cehrgpt_tutorials.sequences.tokens import (
    SEQUENCE_TOKEN_COLUMN,
    VISIT_END_TOKEN,
    VISIT_START_TOKEN,
    is_list_type,
)

COHORT_SQL_DIR = Path(__file__).resolve().parent / "cohorts"
DEFAULT_COHORT_SQL = COHORT_SQL_DIR / "er_visit_within_365_days.sql"
COHORT_COLUMNS = ("subject_id", "cohort_start_date", "cohort_end_date", "outcome_date")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECONDS_PER_DAY = 86_400


def _new_column_types():
    import pyarrow as pa

    return {"person_id": pa.int64(), "index_date": pa.timestamp("us"), "label": pa.int64(), "age": pa.int64(),
            "num_of_concepts": pa.int64(), "num_of_visits": pa.int64()}


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


# ---------------------------------------------------------------------------------------------
# Histories: each cohort row's patient sequence, cut strictly before its index date
# ---------------------------------------------------------------------------------------------


@dataclass
class Histories:
    """The labelled examples of each split, as pyarrow tables in cehrgpt's cohort input format."""

    train: object  # pyarrow.Table
    test: object
    no_sequence: int  # cohort rows whose person has no patient sequence
    no_history: int  # cohort rows with no complete visit before the index date
    split_source: str  # where the split came from, for the report


def read_patient_sequences(folder: Path, person_ids, test_fraction: float):
    """The patient sequences of person_ids, with a 'split' column ("train"/"test").

    With step 2's held-out split the folder has train/ and test/ and those decide; a folder without
    them (made before the split existed) is split with the same function step 2 uses.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    folder = Path(folder)
    wanted = pa.array(sorted({int(p) for p in person_ids}), pa.int64())
    parts = [(name, folder / name) for name in ("train", "test") if (folder / name).is_dir()]
    split_by_folders = len(parts) == 2
    if not split_by_folders:
        parts = [("", folder)]
    tables = []
    for split, path in parts:
        files = parquet_files(path)
        if not files:
            raise PipelineError(f"no patient sequences (.parquet) under {path}: run step 2 or pass --patient-sequence-dir")
        dataset = ds.dataset([str(f) for f in files], format="parquet")
        if SEQUENCE_TOKEN_COLUMN not in dataset.schema.names or "epoch_times" not in dataset.schema.names:
            raise PipelineError(f"{path} is not cehrbert_data's patient_sequence (no concept_ids/epoch_times columns)")
        table = dataset.to_table(filter=pc.field("person_id").cast(pa.int64()).isin(wanted))
        if "split" in table.column_names:  # cehrbert_data writes the split into the rows too; ours decides
            table = table.drop_columns(["split"])
        if split:
            table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
        else:
            test = is_test_person(table.column("person_id").to_numpy().astype(np.int64), test_fraction)
            table = table.append_column("split", pa.array(np.where(test, "test", "train"), pa.string()))
        tables.append(table)
    source = (f"{folder}/train and /test (step 2's split)" if split_by_folders else
              f"is_test_person(person_id, {test_fraction}) on {folder} (no train/ and test/ there: the model "
              "may have been trained on every patient)")
    return pa.concat_tables(tables, promote_options="default"), source


def history_end(tokens, epoch_times, index_seconds: float) -> int:
    """How many leading tokens form the history strictly before the index time (0 = none).

    Cut at the first token dated on or after the index date, then back to the last [VE] before the
    cut, so the history is whole visits only: no half visit, no trailing time token, nothing that
    happened on or after the index date (every kept token is dated before it).
    """
    epoch_times = np.asarray(epoch_times)
    late = np.flatnonzero(epoch_times >= index_seconds)
    cut = int(late[0]) if len(late) else len(epoch_times)
    visit_ends = [i for i in range(cut) if tokens[i] == VISIT_END_TOKEN]
    return visit_ends[-1] + 1 if visit_ends else 0


def filled_ages(ages: list) -> list:
    """Ages with gaps filled from the token before (else after). cehrbert_data writes no age for its
    artificial visits (Visit/0); one null makes pyarrow read a split's whole ages column as floats,
    and cehrgpt's feature script then cannot join its train and validation parts ("The features
    can't be aligned because the key ages ...")."""
    if all(age is not None for age in ages):
        return ages
    known = [age for age in ages if age is not None]
    previous = known[0] if known else -1
    filled = []
    for age in ages:
        previous = previous if age is None else age
        filled.append(previous)
    return filled


def index_seconds(day: datetime.date) -> float:
    """Midnight UTC of the index date in POSIX seconds, the clock of cehrbert_data's epoch_times."""
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.timezone.utc).timestamp()


def build_histories(cohort: pd.DataFrame, patient_sequence_dir: Path,
                    test_fraction: float = DEFAULT_TEST_FRACTION) -> Histories:
    """One example per cohort row: person_id, index_date, label, age and the sequence columns cut
    before the index date (every list column parallel to concept_ids is cut at the same place; list
    columns that are not parallel are left out, since nothing tells which of their items are early)."""
    import pyarrow as pa

    new_column_types = _new_column_types()
    sequences, split_source = read_patient_sequences(patient_sequence_dir, cohort["subject_id"], test_fraction)
    rows = sequences.to_pylist()
    by_person = {int(row["person_id"]): row for row in rows}
    list_columns = [f.name for f in sequences.schema if is_list_type(f.type)]
    examples = {"train": [], "test": []}
    no_sequence = no_history = 0
    for subject_id, start, label, age in zip(cohort["subject_id"], cohort["cohort_start_date"],
                                             cohort["label"], cohort["age_at_index"], strict=True):
        row = by_person.get(int(subject_id))
        if row is None:
            no_sequence += 1
            continue
        tokens = row[SEQUENCE_TOKEN_COLUMN]
        end = history_end(tokens, row["epoch_times"], index_seconds(start))
        if end == 0:
            no_history += 1
            continue
        example = {
            "person_id": int(subject_id),
            "index_date": datetime.datetime.combine(start, datetime.time()),
            "label": int(label),
            "age": int(age),
        }
        for column in list_columns:
            values = row[column]
            if values is not None and len(values) == len(tokens):
                example[column] = values[:end]
        if "ages" in example:
            example["ages"] = filled_ages(example["ages"])
        example["num_of_concepts"] = end
        example["num_of_visits"] = sum(1 for token in tokens[:end] if token == VISIT_START_TOKEN)
        examples[row["split"]].append(example)
    tables = {}
    for split, items in examples.items():
        if not items:
            raise PipelineError(f"no cohort example with a history falls in the {split} split "
                                f"({len(cohort)} cohort rows, {no_sequence} without a sequence, {no_history} without "
                                "a visit before the index date)")
        # Only the columns every example has (a parallel column that is misaligned in one row is dropped),
        # with the types step 2 wrote.
        shared = [name for name in items[0] if all(name in item for item in items)]
        schema = pa.schema([sequences.schema.field(name) if name in sequences.schema.names and name in list_columns
                            else pa.field(name, new_column_types[name]) for name in shared])
        tables[split] = pa.Table.from_pylist([{name: item[name] for name in shared} for item in items], schema=schema)
    return Histories(train=tables["train"], test=tables["test"], no_sequence=no_sequence,
                     no_history=no_history, split_source=split_source)


def examples_fingerprint(histories: Histories) -> str:
    """A digest of the examples without their labels: equal for two tasks with the same persons, index
    dates and histories (their features are the same)."""
    import hashlib

    digest = hashlib.sha256()
    for table in (histories.train, histories.test):
        unlabelled = table.drop_columns([name for name in ("label", "time_to_event") if name in table.column_names])
        for batch in unlabelled.to_batches():
            for column in batch.columns:
                digest.update(str(column.to_pylist()).encode())
        digest.update(b"|")
    return digest.hexdigest()


def write_histories(histories: Histories, folder: Path) -> dict[str, Path]:
    """Write train/ and test/ Parquet folders (what cehrgpt's feature and zero-shot tools read)."""
    import pyarrow.parquet as pq

    paths = {}
    for split in ("train", "test"):
        path = Path(folder) / split
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(getattr(histories, split), path / "part-00000.parquet")
        paths[split] = path
    return paths


def outcome_seen_in_future(cohort: pd.DataFrame, patient_sequence_dir: Path, outcome_tokens: list[str],
                           test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[int, int]:
    """(positives, positives whose outcome token appears in their sequence inside the time at risk).

    For the report only, never a model input: how many outcomes the sequences (and so the model's
    training data) show at all. cehrbert_data keeps a visit only with a concept of its concept list,
    so an outcome the SQL finds can be missing from the sequences.
    """
    positives = cohort[cohort["label"] == 1]
    sequences, _ = read_patient_sequences(patient_sequence_dir, positives["subject_id"], test_fraction)
    columns = ["person_id", SEQUENCE_TOKEN_COLUMN, "epoch_times"]
    by_person = {int(row["person_id"]): row for row in sequences.select(columns).to_pylist()}
    wanted = set(outcome_tokens)
    seen = 0
    for subject_id, start, end in zip(positives["subject_id"], positives["cohort_start_date"],
                                      positives["cohort_end_date"], strict=True):
        row = by_person.get(int(subject_id))
        if row is None:
            continue
        low, high = index_seconds(start), index_seconds(end) + SECONDS_PER_DAY
        seen += any(token in wanted and low <= when < high
                    for token, when in zip(row[SEQUENCE_TOKEN_COLUMN], row["epoch_times"], strict=True))
    return len(positives), seen
