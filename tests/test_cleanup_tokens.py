"""cleanup_tokens.py on crafted patient_sequence files in both column layouts cehrbert_data has written.

Each crafted row carries, in every parallel column, values derived from the token's position, so
after the cleanup we can check item by item that the surviving values are the ones that stood beside
the surviving tokens. The scripts run as a learner runs them (subprocess, real files); the failure
injection runs clean_file in-process with the final rename made to fail.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, run_script
from helpers import error_line

from cehrgpt_tutorials.sequences import cleaning

MALFORMED = {"i-D-3", "i-D-12", "VS-D-2-VE", "D5x", "i-W-1"}
VALID_TIME_TOKENS = ["D5", "i-D3", "W2", "M1", "LT", "VS-D7-VE", "i-H5", "D-5"]

# cehrbert_data 0.1.1's columns (what step 2 writes today) and the older layout of the sample data in
# the cehrgpt repository (concept_values and event_group_ids, no units or epoch_times).
LAYOUT_0_1_1 = {
    "visit_segments": pa.int32(), "orders": pa.int32(), "dates": pa.int32(), "ages": pa.int64(),
    "visit_concept_orders": pa.int32(), "concept_value_masks": pa.int32(), "number_as_values": pa.float32(),
    "concept_as_values": pa.string(), "is_numeric_types": pa.int32(), "mlm_skip_values": pa.int32(),
    "priorities": pa.float64(), "visit_concept_ids": pa.int64(), "visit_rank_orders": pa.int32(),
    "concept_orders": pa.int32(), "record_ranks": pa.int32(), "units": pa.string(), "epoch_times": pa.int64(),
}
LAYOUT_OLDER = {
    "visit_segments": pa.int32(), "orders": pa.int32(), "dates": pa.int32(), "ages": pa.int32(),
    "visit_concept_orders": pa.int32(), "concept_value_masks": pa.int32(), "concept_values": pa.float64(),
    "mlm_skip_values": pa.int32(), "visit_concept_ids": pa.string(), "visit_rank_orders": pa.int32(),
    "concept_orders": pa.int32(), "record_ranks": pa.int32(), "event_group_ids": pa.string(),
}


def value_for(value_type: pa.DataType, row: int, position: int):
    """A value that says which row and position it stood at, in the column's type."""
    number = row * 1000 + position
    if pa.types.is_string(value_type):
        return f"r{row}p{position}"
    if pa.types.is_floating(value_type):
        return number + 0.5
    return number


def crafted_tokens(row: int) -> list[str]:
    """A patient with outpatient and inpatient visits, valid time tokens and some malformed ones."""
    malformed = sorted(MALFORMED)
    tokens = ["year:2011", f"age:{30 + row}", "8507", "8527", "[VS]", "9202", "40213154", "[VE]",
              VALID_TIME_TOKENS[row % len(VALID_TIME_TOKENS)], "[VS]", "9201", "201826"]
    if row % 3 != 2:  # every third patient is clean
        tokens += [malformed[row % len(malformed)], "4329847", malformed[(row + 1) % len(malformed)]]
    tokens += ["i-D3", "320128", "8536", "[VE]", "D-5", "[VS]", "9202", "1127433", "[VE]"]
    if row % 4 == 0:
        tokens.insert(0, malformed[row % len(malformed)])  # at the very start, too
    return tokens


def crafted_table(layout: dict[str, pa.DataType], rows: int = 12) -> pa.Table:
    token_lists = [crafted_tokens(row) for row in range(rows)]
    token_lists.append([])  # a patient with no tokens at all
    columns = {
        "cohort_member_id": pa.array(range(len(token_lists)), pa.int64()),
        "person_id": pa.array(range(100, 100 + len(token_lists)), pa.int64()),
        "concept_ids": pa.array(token_lists, pa.list_(pa.string())),
    }
    for name, value_type in layout.items():
        columns[name] = pa.array(
            [[value_for(value_type, row, position) for position in range(len(tokens))]
             for row, tokens in enumerate(token_lists)],
            pa.list_(value_type),
        )
    columns["num_of_visits"] = pa.array([tokens.count("[VS]") for tokens in token_lists], pa.int32())
    columns["num_of_concepts"] = pa.array([len(tokens) for tokens in token_lists], pa.int64())
    schema = pa.schema([pa.field(name, array.type, nullable=name not in ("concept_ids", "num_of_concepts"))
                        for name, array in columns.items()],
                       metadata={b"org.apache.spark.version": b"3.1.2", b"made.by": b"test_cleanup_tokens"})
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def write_like_spark(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    """Parquet as Spark writes it: snappy, the schema only in Parquet terms (no Arrow schema), Spark's metadata."""
    with pq.ParquetWriter(path, table.schema, compression="snappy", store_schema=False) as writer:
        writer.write_table(table, row_group_size=row_group_size)
        writer.add_key_value_metadata(table.schema.metadata or {})


def write_sequence_folder(folder: Path, table: pa.Table, parts: int = 2, row_group_size: int = 4,
                          spark_like: bool = True) -> list[Path]:
    """Spark-like output: part files (several row groups each) in train/ and test/, plus _SUCCESS and a .crc.

    spark_like=False writes them with pyarrow's defaults instead (Arrow schema stored in the file).
    """
    paths = []
    per_part = -(-table.num_rows // (parts * 2))
    for index, split in enumerate(["train", "test"] * parts):
        part = table.slice(index * per_part, per_part)
        path = folder / split / f"part-{index:05d}-0000.snappy.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        if spark_like:
            write_like_spark(part, path, row_group_size=row_group_size)
        else:
            pq.write_table(part, path, compression="snappy", row_group_size=row_group_size)
        (path.parent / "_SUCCESS").write_text("")
        (path.parent / f".{path.name}.crc").write_bytes(hadoop_crc(path.read_bytes()))
        paths.append(path)
    return paths


def hadoop_crc(data: bytes, chunk: int = 512) -> bytes:
    """The .crc file Hadoop's local file system (Spark) writes beside a file: magic, chunk size, CRC-32s."""
    return b"crc\0" + struct.pack(">i", chunk) + b"".join(
        struct.pack(">I", zlib.crc32(data[start:start + chunk])) for start in range(0, len(data), chunk))


def checksum_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.crc")


def read_folder(folder: Path) -> pa.Table:
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_")))
    return pa.concat_tables(pq.read_table(path) for path in files).sort_by("person_id")


def expected_after_cleanup(table: pa.Table) -> dict[str, list]:
    """Pure-Python reference: drop malformed positions from every parallel list column."""
    rows = table.to_pylist()
    list_columns = [f.name for f in table.schema if pa.types.is_list(f.type)]
    for row in rows:
        keep = [token not in MALFORMED for token in row["concept_ids"]]
        for name in list_columns:
            row[name] = [value for value, kept in zip(row[name], keep, strict=True) if kept]
        row["num_of_concepts"] = len(row["concept_ids"])
    return pa.Table.from_pylist(rows, schema=table.schema).sort_by("person_id").to_pydict()


@pytest.mark.parametrize(
    "layout, spark_like",
    [(LAYOUT_0_1_1, True), (LAYOUT_OLDER, True), (LAYOUT_0_1_1, False)],
    ids=["cehrbert_data-0.1.1", "older", "written-by-pyarrow"],
)
def test_cleanup_keeps_every_parallel_column_aligned(tmp_path, pipeline_env, layout, spark_like):
    original = crafted_table(layout)
    folder = tmp_path / "patient_sequence"
    paths = write_sequence_folder(folder, original, spark_like=spark_like)
    key_value_metadata = {path: pq.read_metadata(path).metadata for path in paths}
    schemas_before = {path: pq.read_schema(path) for path in paths}
    assert 0 < len(dirty_files_of(paths)) < len(paths)  # the last part holds only the patient without tokens
    total_malformed = sum(token in MALFORMED for tokens in original["concept_ids"].to_pylist() for token in tokens)
    assert total_malformed > 10

    clean_file_before = [path for path in paths if path not in dirty_files_of(paths)]
    untouched_bytes = {path: path.read_bytes() for path in clean_file_before}
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Removed {total_malformed} malformed tokens"
    assert {path: path.read_bytes() for path in clean_file_before} == untouched_bytes
    assert "negative i-D" in result.stdout and "unparseable" in result.stdout
    touched_rows = sum(any(t in MALFORMED for t in tokens) for tokens in original["concept_ids"].to_pylist())
    assert f"patients touched: {touched_rows}" in result.stdout
    assert f"Files: rewrote {len(paths) - len(clean_file_before)} of {len(paths)}" in result.stdout

    cleaned = read_folder(folder)
    assert cleaned.to_pydict() == expected_after_cleanup(original)
    for row in cleaned.to_pylist():
        assert not MALFORMED & set(row["concept_ids"])
        assert row["num_of_concepts"] == len(row["concept_ids"])
        for name in layout:
            assert len(row[name]) == len(row["concept_ids"]), name
    # Valid time tokens (and D-5, which cehrgpt does not treat as a time token) survive.
    surviving = {token for tokens in cleaned["concept_ids"].to_pylist() for token in tokens}
    assert set(VALID_TIME_TOKENS) <= surviving
    for path in paths:
        assert pq.read_schema(path).equals(schemas_before[path], check_metadata=True)
        # The file's own key-value metadata too: Spark's keys kept, no Arrow schema added to Spark's files.
        assert set(pq.read_metadata(path).metadata) == set(key_value_metadata[path])
        # Spark's checksum file matches the new content (Spark refuses a file whose .crc does not).
        assert checksum_of(path).read_bytes() == hadoop_crc(path.read_bytes())
        assert oct(checksum_of(path).stat().st_mode & 0o777) == oct(0o644 & ~current_umask())
        assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~current_umask())
        assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]

    # A second run finds nothing and leaves the files byte for byte as they are.
    contents = {path: path.read_bytes() for path in paths}
    again = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == "Removed 0 malformed tokens"
    assert {path: path.read_bytes() for path in paths} == contents


@pytest.mark.parametrize("spark_like", [True, False], ids=["spark-like", "written-by-pyarrow"])
def test_streaming_in_small_batches_gives_the_same_cleaned_rows(tmp_path, spark_like):
    """Batches of ~2 rows cut across row groups of 5: the result is the reference's, row for row."""
    original = crafted_table(LAYOUT_0_1_1, rows=24)
    path = tmp_path / "part-00000.snappy.parquet"
    if spark_like:
        write_like_spark(original, path, row_group_size=5)
    else:
        pq.write_table(original, path, compression="snappy", row_group_size=5)
    schema_before = pq.read_schema(path)
    report = cleaning.CleanupReport()
    assert cleaning.clean_file(path, cleaning.TokenOracle(), report, dry_run=False,
                                     tokens_per_batch=40)
    assert pq.read_table(path).sort_by("person_id").to_pydict() == expected_after_cleanup(original)
    assert pq.read_schema(path).equals(schema_before, check_metadata=True)
    assert report.tokens_removed == sum(token in MALFORMED for tokens in original["concept_ids"].to_pylist()
                                        for token in tokens)
    assert pq.read_metadata(path).num_row_groups > 5  # it did write batch by batch


def test_negative_inpatient_days_are_removed_without_importing_cehrgpt(tmp_path, pipeline_env):
    """Step 2's usual malformed token (i-D-<n>) has a certain verdict: no seconds-long cehrgpt/torch import."""
    tokens = [["year:2011", "age:40", "8507", "[VS]", "9201", "201826", "i-D-3", "i-D2", "320128", "[VE]", "D7",
               "[VS]", "9202", "1127433", "[VE]"]] * 6
    table = pa.table({"person_id": range(6), "concept_ids": pa.array(tokens, pa.list_(pa.string())),
                      "ages": pa.array([list(range(len(row))) for row in tokens], pa.list_(pa.int64()))})
    write_like_spark(table, tmp_path / "part-00000.parquet")
    check = ("import sys, cleanup_tokens; cleanup_tokens.main(sys.argv[1:]); "
             "print('imported:', sorted({'cehrgpt', 'torch'} & set(sys.modules)))")
    result = run_script(["-c", check, "--patient-sequence-dir", str(tmp_path)], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert "Removed 6 malformed tokens" in result.stdout
    assert "imported: []" in result.stdout


def test_null_ages_are_filled_so_every_worker_reads_integers(tmp_path, pipeline_env):
    """Step 2 leaves ages null on its artificial visits (Visit/0); pandas makes such a row's list float, so
    two tokenization workers disagree on the type. Filled from the row's next event (else the previous),
    even in a file with no malformed token; other columns' nulls are kept."""
    tokens = [["year:2011", "age:40", "8507", "[VS]", "9202", "40213154", "[VE]", "D660", "[VS]", "Visit/0",
               "260139", "[VE]"], ["year:2011", "age:41", "8507", "[VS]", "Visit/0", "260139", "[VE]"]]
    ages = [[40, 40, 40, 40, 40, 40, 40, None, None, None, 42, None], [None, 41, 41, None, None, 43, None]]
    visits = [[0, 0, 0, 9202, 9202, 9202, 9202, 0, 0, 0, None, 0], [0, 0, 0, 0, 0, None, 0]]
    table = pa.table({"person_id": [1, 2], "concept_ids": pa.array(tokens, pa.list_(pa.string())),
                      "ages": pa.array(ages, pa.list_(pa.int64())),
                      "visit_concept_ids": pa.array(visits, pa.list_(pa.int32())),
                      "num_of_concepts": pa.array([12, 7], pa.int64())})
    folder = tmp_path / "patient_sequence"
    folder.mkdir()
    write_like_spark(table, folder / "part-00000.parquet")
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert "Null items filled (so every worker reads them as integers): ages 8" in result.stdout
    cleaned = pq.read_table(folder)
    assert cleaned["ages"].to_pylist() == [[40, 40, 40, 40, 40, 40, 40, 42, 42, 42, 42, 42],
                                           [41, 41, 41, 43, 43, 43, 43]]
    assert cleaned["visit_concept_ids"].to_pylist() == visits
    assert cleaned["concept_ids"].to_pylist() == tokens
    assert cleaned.schema.equals(table.schema)


def dirty_files_of(paths: list[Path]) -> list[Path]:
    return [path for path in paths
            if MALFORMED & {token for tokens in pq.read_table(path)["concept_ids"].to_pylist() for token in tokens}]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_dry_run_reports_and_changes_nothing(tmp_path, pipeline_env):
    original = crafted_table(LAYOUT_0_1_1)
    folder = tmp_path / "patient_sequence"
    paths = write_sequence_folder(folder, original)
    contents = {path: path.read_bytes() for path in paths}
    total_malformed = sum(token in MALFORMED for tokens in original["concept_ids"].to_pylist() for token in tokens)

    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder), "--dry-run"], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert f"would remove {total_malformed} malformed tokens" in result.stdout
    assert {path: path.read_bytes() for path in paths} == contents


def test_default_folder_comes_from_cehr_gpt_data_dir(tmp_path, pipeline_env):
    data_dir = tmp_path / "data"
    table = crafted_table(LAYOUT_OLDER, rows=3)
    write_sequence_folder(data_dir / "patient_sequence", table, parts=1)
    planted = sum(token in MALFORMED for tokens in table["concept_ids"].to_pylist() for token in tokens)
    environment = dict(pipeline_env, CEHR_GPT_DATA_DIR=str(data_dir))
    result = run_script(["cleanup_tokens.py"], environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Removed {planted} malformed tokens"
    assert read_folder(data_dir / "patient_sequence").to_pydict() == expected_after_cleanup(table)


def test_column_aligned_in_some_rows_only_is_cut_where_aligned(tmp_path, pipeline_env):
    """A row whose `units` list was already out of step (and a null `dates` list) is left as it was."""
    table = crafted_table(LAYOUT_0_1_1, rows=4)
    units = table["units"].to_pylist()
    units[0] = units[0][:-1]  # row 0 has malformed tokens and a short units list
    dates = table["dates"].to_pylist()
    dates[1] = None
    table = table.set_column(table.schema.get_field_index("units"), table.schema.field("units"),
                             pa.array(units, table.schema.field("units").type))
    table = table.set_column(table.schema.get_field_index("dates"), table.schema.field("dates"),
                             pa.array(dates, table.schema.field("dates").type))
    path = tmp_path / "patient_sequence" / "part-00000.parquet"
    path.parent.mkdir()
    write_like_spark(table, path)

    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(path.parent)], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert "warning: units is not aligned with concept_ids in 1 touched row(s)" in result.stdout
    assert "warning: dates is not aligned with concept_ids in 1 touched row(s)" in result.stdout

    cleaned = pq.read_table(path).to_pylist()
    assert cleaned[0]["units"] == units[0]  # unaligned row: untouched
    assert cleaned[1]["dates"] is None
    for before, after in zip(table.to_pylist()[1:], cleaned[1:], strict=True):
        keep = [token not in MALFORMED for token in before["concept_ids"]]
        assert after["units"] == [u for u, k in zip(before["units"], keep, strict=True) if k]
    for before, after in zip(table.to_pylist(), cleaned, strict=True):
        keep = [token not in MALFORMED for token in before["concept_ids"]]
        assert after["ages"] == [a for a, k in zip(before["ages"], keep, strict=True) if k]


def test_failed_write_leaves_original_byte_identical(tmp_path, monkeypatch):
    """Fault injection: the rename onto the original fails after the new file was written."""
    folder = tmp_path / "patient_sequence"
    paths = write_sequence_folder(folder, crafted_table(LAYOUT_0_1_1), parts=1)
    contents = {path: path.read_bytes() for path in paths}

    def failing_replace(source, target):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        cleaning.clean_file(paths[0], cleaning.TokenOracle(), cleaning.CleanupReport(),
                                  dry_run=False)
    assert paths[0].read_bytes() == contents[paths[0]]
    # Its .crc was removed before the rename (Spark reads a file without one unchecked); nothing else is left.
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted([paths[0].name, "_SUCCESS"])


def test_failure_while_writing_parquet_leaves_original(tmp_path, monkeypatch):
    """Fault injection: the Parquet writer dies half way (after writing some bytes)."""
    folder = tmp_path / "patient_sequence"
    paths = write_sequence_folder(folder, crafted_table(LAYOUT_OLDER), parts=1)
    contents = paths[0].read_bytes()
    checksum = checksum_of(paths[0]).read_bytes()
    original_close = pq.ParquetWriter.close

    def failing_close(self):
        original_close(self)
        raise OSError(5, "I/O error (injected)")

    monkeypatch.setattr(pq.ParquetWriter, "close", failing_close)
    with pytest.raises(OSError, match="injected"):
        cleaning.clean_file(paths[0], cleaning.TokenOracle(), cleaning.CleanupReport(),
                                  dry_run=False)
    assert paths[0].read_bytes() == contents
    assert checksum_of(paths[0]).read_bytes() == checksum
    assert not [p for p in paths[0].parent.iterdir() if ".tmp" in p.name]


def test_empty_files_and_folders(tmp_path, pipeline_env):
    folder = tmp_path / "patient_sequence"
    folder.mkdir()
    empty_table = crafted_table(LAYOUT_0_1_1).slice(0, 0)
    pq.write_table(empty_table, folder / "part-00000.parquet")
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Removed 0 malformed tokens"

    no_files = tmp_path / "nothing_here"
    no_files.mkdir()
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(no_files)], pipeline_env)
    assert error_line(result, alone=True) == f"error: no Parquet files under {no_files}"

    missing = tmp_path / "missing"
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(missing)], pipeline_env)
    assert error_line(result, alone=True).startswith(f"error: patient sequence folder {missing} does not exist")
    assert "Removed" not in result.stdout


def test_non_sequence_parquet_is_refused_and_nothing_changes(tmp_path, pipeline_env):
    folder = tmp_path / "patient_sequence"
    paths = write_sequence_folder(folder, crafted_table(LAYOUT_0_1_1), parts=1)
    stray = folder / "train" / "part-99999-person.parquet"
    pq.write_table(pa.table({"person_id": [1, 2], "year_of_birth": [1970, 1980]}), stray)
    wrong_type = folder / "test" / "part-99998.parquet"
    pq.write_table(pa.table({"concept_ids": ["8507", "8527"]}), wrong_type)
    contents = {path: path.read_bytes() for path in [*paths, stray, wrong_type]}

    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert "is not a patient sequence file" in error_line(result, alone=True)
    assert "Removed" not in result.stdout
    assert {path: path.read_bytes() for path in contents} == contents

    stray.unlink()
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert f"{wrong_type} is not a patient sequence file: concept_ids is string" in error_line(result, alone=True)

    wrong_type.unlink()
    garbage = folder / "test" / "part-99997.parquet"
    garbage.write_bytes(b"PAR1 this is not really parquet")
    result = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(folder)], pipeline_env)
    assert error_line(result, alone=True).startswith(f"error: {garbage} is not a readable Parquet file")
    assert {path: path.read_bytes() for path in paths} == {path: contents[path] for path in paths}


def test_parallel_list_columns_counts_aligned_rows():
    from cehrgpt_tutorials.sequences.tokens import aligned_rows, parallel_list_columns

    table = crafted_table(LAYOUT_OLDER, rows=3)
    assert parallel_list_columns(table) == {name: table.num_rows for name in LAYOUT_OLDER}
    ages = table["ages"].to_pylist()
    ages[1] = ages[1][:-2]
    table = table.set_column(table.schema.get_field_index("ages"), "ages", pa.array(ages, pa.list_(pa.int32())))
    assert aligned_rows(table, "ages").to_pylist() == [True, False, True, True]
    assert parallel_list_columns(table)["ages"] == table.num_rows - 1


def test_oracle_shortcut_agrees_with_cehrgpt():
    """Tokens the shortcut passes without asking cehrgpt are ones cehrgpt's parser accepts."""
    from cehrgpt_tutorials.sequences.tokens import time_token_problem

    shortcut = cleaning.CERTAINLY_FINE_TOKEN
    passed = ["8507", "0", "40213154", "D0", "D1999", "W3", "M11", "Y2", "LT", "i-D0", "i-D45", "VS-D7-VE",
              "[VS]", "[VE]", "[DEATH]", "year:2011", "age:37", "Visit/0", "Discharge/0", "Gender/0", "Race/0"]
    for token in passed:
        assert shortcut.fullmatch(token), token
        assert time_token_problem(token) is None, token
    for token in [*MALFORMED, "i-D-3", "VS-D-2-VE", "i-3mt-6mt", "5m-15m", "i-LT", "D5x", "i-", "VS-"]:
        assert not shortcut.fullmatch(token), token
    # ...and the ones it calls malformed without asking are ones cehrgpt's parser rejects.
    negative = cleaning.CERTAINLY_NEGATIVE_INPATIENT_DAYS
    for token in ["i-D-1", "i-D-3", "i-D-12", "i-D-400"]:
        assert negative.fullmatch(token), token
        assert time_token_problem(token) is not None, token
    for token in ["i-D3", "i-D-", "i-D-3x", "VS-D-2-VE", "D-5", "i-H-3"]:
        assert not negative.fullmatch(token), token


@pytest.mark.parametrize("yours, expected", [(None, "system"), ("jemalloc", "jemalloc")])
def test_the_script_gives_arrow_the_c_librarys_allocator_unless_you_chose_one(yours, expected):
    """pyarrow's default allocator (mimalloc) keeps freed batches per thread, so cleanup's peak memory
    grows with the threads; the C library's gives them back (bench/RESULTS.md, 2026-12-04, "cleanup_tokens.py's
    memory, measured again")."""
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
    if yours:
        environment["ARROW_DEFAULT_MEMORY_POOL"] = yours
    probe = ("import runpy, sys\n"
             "sys.argv = ['cleanup_tokens.py', '--help']\n"
             "try:\n"
             "    runpy.run_path('cleanup_tokens.py', run_name='__main__')\n"
             "except SystemExit:\n"
             "    import pyarrow\n"
             "    print('pool', pyarrow.default_memory_pool().backend_name)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"pool {expected}"
