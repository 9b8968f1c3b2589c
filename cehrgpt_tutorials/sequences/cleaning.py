"""Removing tokens from patient sequences (cehrbert_data's patient_sequence Parquet files) without
breaking them: a removed token goes from concept_ids and from the same position of every list column
aligned with it in that row (as many items as concept_ids); num_of_concepts follows; every other
column, the schema and its metadata are kept. What to remove is the caller's: an oracle maps a file's
distinct tokens to {token: kind} (step 3's TokenOracle: time tokens cehrgpt cannot parse; step 2's
concept floor: concepts too few persons have). Null `ages` items are filled too (NULL_FILLS).
"""

from __future__ import annotations

import array
import collections
import os
import re
import shutil
import struct
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import atomic_file, parquet_files
from cehrgpt_tutorials.sequences.tokens import (
    SEQUENCE_TOKEN_COLUMN,
    check_patient_sequence_schema,
    is_list_type,
    time_token_problem,
)

NUM_OF_CONCEPTS_COLUMN = "num_of_concepts"
# Null items in these integer columns are filled: pandas turns a list of ints holding a null into
# floats, so with several preprocessing workers the runner's tokenization gets int ages in some shards
# and float in others and cannot join them ("The features can't be aligned because the key ages...").
# Step 2 leaves ages null on the events of the artificial visits it builds (Visit/0): their time
# token, [VS], [VE] (and visit_concept_ids null on the disconnected record, but the runner drops that
# column before tokenizing). A null age takes the age of the row's next event (the visit's own), else
# the previous one. Another column could get a constant: {"name": value}.
NULL_FILLS = {"ages": "neighbours"}
# A record batch holds about this many tokens (times ~18 parallel columns): tens of MB per file being
# cleaned, whatever the size of the file or its row groups. The size that keeps cleanup within its
# memory goal at 100x the demo: bench/RESULTS.md, 2026-12-02 (third session), "cleanup's batch size".
TOKENS_PER_BATCH = 64 * 1024
READ_BUFFER_BYTES = 1 << 20
HADOOP_CRC_MAGIC = b"crc\0"
PERSON_COLUMN = "person_id"


@dataclass
class CleanupReport:
    """What was (or, with --dry-run, would be) removed, summed over files."""

    tokens_by_kind: collections.Counter = field(default_factory=collections.Counter)
    tokens_by_value: collections.Counter = field(default_factory=collections.Counter)
    kind_of_token: dict = field(default_factory=dict)
    rows_touched: int = 0
    patients_touched: set = field(default_factory=set)
    files_changed: list = field(default_factory=list)
    # column name -> rows where it had a malformed token to drop but was not aligned with concept_ids
    unaligned_rows: collections.Counter = field(default_factory=collections.Counter)
    realigned_columns: set = field(default_factory=set)
    filled_items: collections.Counter = field(default_factory=collections.Counter)  # column -> null items filled

    @property
    def tokens_removed(self) -> int:
        return sum(self.tokens_by_kind.values())

    def add(self, other: CleanupReport) -> None:
        """Fold in one file's report (files are cleaned in parallel, each into its own report)."""
        self.tokens_by_kind.update(other.tokens_by_kind)
        self.tokens_by_value.update(other.tokens_by_value)
        self.kind_of_token.update(other.kind_of_token)
        self.rows_touched += other.rows_touched
        self.patients_touched |= other.patients_touched
        self.files_changed += other.files_changed
        self.unaligned_rows.update(other.unaligned_rows)
        self.realigned_columns |= other.realigned_columns
        self.filled_items.update(other.filled_items)


# Shapes cehrgpt's parser certainly accepts (or does not treat as time tokens): concept ids, D/W/M/Y<n>,
# LT, i-D<n>, VS-D<n>-VE, [VS]-style markers, year:/age: tokens, Visit/0-style placeholders. They are
# only a shortcut that spares importing cehrgpt (and torch, seconds) when every token is one of them;
# any other token goes to cehrgpt's own functions. tests/test_cleanup_tokens.py checks the shortcut
# against cehrgpt's verdict.
CERTAINLY_FINE_TOKEN = re.compile(r"\d+|[DWMY]\d+|LT|i-D\d+|VS-D\d+-VE|\[[A-Z]+\]|(?:year|age):\d+|[A-Za-z]+/\d+")
# ...and the one malformed shape step 2 writes (a negative inpatient day gap): cehrgpt calls it a time
# token and cannot parse it. Knowing it spares the import on the usual dirty data too.
CERTAINLY_NEGATIVE_INPATIENT_DAYS = re.compile(r"i-D-\d+")


class TokensToRemove:
    """An oracle for clean_file: exactly these tokens, each with the kind the report counts it under."""

    def __init__(self, kinds: dict[str, str]):
        self.kinds = kinds

    def to_remove(self, distinct_tokens) -> dict[str, str]:
        return {token: self.kinds[token] for token in distinct_tokens if token in self.kinds}


class TokenOracle:
    """cehrgpt's verdict on each distinct token, asked once per token for the whole run."""

    def __init__(self):
        self.verdicts: dict[str, str | None] = {}

    def to_remove(self, distinct_tokens) -> dict[str, str]:
        """{token: kind} for the malformed ones among `distinct_tokens` (kind: 'negative i-D', ...)."""
        found = {}
        for token in distinct_tokens:
            if token is None:
                continue
            if token not in self.verdicts:
                self.verdicts[token] = self._verdict(token)
            if self.verdicts[token] is not None:
                found[token] = self.verdicts[token]
        return found

    @staticmethod
    def _verdict(token: str) -> str | None:
        if CERTAINLY_FINE_TOKEN.fullmatch(token):
            return None
        if CERTAINLY_NEGATIVE_INPATIENT_DAYS.fullmatch(token):
            return "negative i-D"
        problem = time_token_problem(token)  # imports cehrgpt (and torch): seconds, once
        if problem is not None and token.startswith("i-D-"):
            return "negative i-D"
        return problem


def _exclusive_cumsum(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _list_lengths(array) -> np.ndarray:
    """Items per row, null lists counting 0 (matching what .flatten() returns for them)."""
    return pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _rebuild_list(original, kept_values, new_lengths: np.ndarray):
    """A list array of the same type and nulls as `original`, holding `kept_values` cut by `new_lengths`."""
    offsets = np.zeros(len(new_lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    mask = original.is_null() if original.null_count else None
    if pa.types.is_large_list(original.type):
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), kept_values, type=original.type, mask=mask)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), kept_values, type=original.type, mask=mask)


def clean_batch(batch: pa.RecordBatch, malformed: pa.Array, report: CleanupReport, token_kinds: dict[str, str]):
    """Drop the `malformed` tokens of one record batch from concept_ids and its aligned list columns.

    A column aligned in some rows only is cut in those rows and left as it is in the others (the report
    counts them). Positional columns (orders, record_ranks, ...) keep their values: the surviving tokens
    keep their order, with a gap where a token was removed."""
    tokens = batch.column(SEQUENCE_TOKEN_COLUMN)
    flat_tokens = tokens.flatten()
    if pa.types.is_dictionary(flat_tokens.type):
        # Tokens read as dictionary indices: test the few distinct strings, then index the verdicts.
        malformed_entry = pc.fill_null(pc.is_in(flat_tokens.dictionary, value_set=malformed), False)
        drop = pc.fill_null(malformed_entry.take(flat_tokens.indices), False)
    else:
        drop = pc.fill_null(pc.is_in(flat_tokens, value_set=malformed), False)
    dropped_count = pc.sum(drop).as_py() or 0
    if dropped_count == 0:
        return batch
    keep = pc.invert(drop)
    keep_numpy = keep.to_numpy(zero_copy_only=False)

    # Where each dropped token sat: its row, and how many each row loses.
    token_rows = pc.list_parent_indices(tokens).to_numpy()
    removed_per_row = np.bincount(token_rows[~keep_numpy], minlength=batch.num_rows).astype(np.int64)
    token_lengths = _list_lengths(tokens)
    token_starts = _exclusive_cumsum(token_lengths)

    counts = pc.value_counts(flat_tokens.filter(drop).cast(pa.string()))
    for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
        report.tokens_by_value[value] += count
        report.tokens_by_kind[token_kinds[value]] += count
        report.kind_of_token[value] = token_kinds[value]
    touched = removed_per_row > 0
    report.rows_touched += int(touched.sum())
    if PERSON_COLUMN in batch.schema.names:
        report.patients_touched.update(batch.column(PERSON_COLUMN).filter(pa.array(touched)).to_pylist())

    columns = []
    for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
        if column_name == SEQUENCE_TOKEN_COLUMN:
            columns.append(_rebuild_list(column, flat_tokens.filter(keep), token_lengths - removed_per_row))
        elif column_name == NUM_OF_CONCEPTS_COLUMN:
            recount = np.where(touched, token_lengths - removed_per_row,
                               column.to_numpy(zero_copy_only=False))
            columns.append(pa.array(recount, mask=column.is_null().to_numpy(zero_copy_only=False)).cast(column.type))
        elif is_list_type(column.type):
            columns.append(_clean_parallel_column(column_name, column, keep, keep_numpy, removed_per_row,
                                                  token_lengths, token_starts, report))
        else:
            columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _clean_parallel_column(name, column, keep, keep_numpy, removed_per_row, token_lengths, token_starts,
                           report: CleanupReport):
    """Drop from `column` the positions dropped from concept_ids, in the rows where it is aligned."""
    lengths = _list_lengths(column)
    aligned = (lengths == token_lengths) & ~column.is_null().to_numpy(zero_copy_only=False)
    if aligned.all():
        # The usual case: flattened, the column lines up item for item with concept_ids.
        report.realigned_columns.add(name)
        return _rebuild_list(column, column.flatten().filter(keep), lengths - removed_per_row)
    report.unaligned_rows[name] += int(((removed_per_row > 0) & ~aligned).sum())
    if not aligned.any():
        return column
    # Mixed rows: map each item of an aligned row to the same position in concept_ids, keep the rest.
    report.realigned_columns.add(name)
    item_rows = pc.list_parent_indices(column).to_numpy()
    item_positions = np.arange(len(item_rows), dtype=np.int64) - _exclusive_cumsum(lengths)[item_rows]
    item_keep = np.ones(len(item_rows), dtype=bool)
    in_aligned_row = aligned[item_rows]
    item_keep[in_aligned_row] = keep_numpy[token_starts[item_rows[in_aligned_row]] + item_positions[in_aligned_row]]
    new_lengths = lengths - np.where(aligned, removed_per_row, 0)
    return _rebuild_list(column, column.flatten().filter(pa.array(item_keep)), new_lengths)


def fill_null_items(batch: pa.RecordBatch, report: CleanupReport, names) -> pa.RecordBatch:
    """Fill the null items of the NULL_FILLS columns among `names` (see there), row by row."""
    columns = list(batch.columns)
    changed = False
    for name, rule in NULL_FILLS.items():
        if name not in names or name not in batch.schema.names:
            continue
        index = batch.schema.get_field_index(name)
        column = batch.column(index)
        if not is_list_type(column.type):
            continue
        values = column.flatten()
        if values.null_count == 0:
            continue
        report.filled_items[name] += values.null_count
        if rule == "neighbours":
            filled = _fill_from_neighbours(values, pc.list_parent_indices(column).to_numpy())
        else:
            filled = pc.fill_null(values, pa.scalar(rule, values.type))
        columns[index] = _rebuild_list(column, filled, _list_lengths(column))
        changed = True
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema) if changed else batch


def _fill_from_neighbours(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """Each null takes the next value of its row, else the previous one, else 0 (a row of nulls only)."""
    numbers = values.fill_null(0).to_numpy(zero_copy_only=False)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    position = np.arange(len(numbers))
    following = np.minimum.accumulate(np.where(valid, position, len(numbers))[::-1])[::-1]
    preceding = np.maximum.accumulate(np.where(valid, position, -1))
    same_row_after = (following < len(numbers)) & (rows[np.minimum(following, len(numbers) - 1)] == rows)
    same_row_before = (preceding >= 0) & (rows[np.maximum(preceding, 0)] == rows)
    source = np.where(same_row_after, following, np.where(same_row_before, preceding, -1))
    filled = np.where(valid, numbers, np.where(source >= 0, numbers[np.maximum(source, 0)], 0))
    return pa.array(filled, values.type)


def clean_file(path: Path, oracle, report: CleanupReport, dry_run: bool,
               tokens_per_batch: int = TOKENS_PER_BATCH, fill_nulls: bool = True) -> bool:
    """Clean one Parquet file in place (atomically); returns whether it had malformed tokens.

    The file is streamed in record batches of about `tokens_per_batch` tokens, twice: concept_ids
    alone to find its distinct tokens, then (only when some are malformed) every column, each batch
    cleaned and written out before the next is read. So memory follows the batch, not the file or
    its row groups. A file without malformed tokens is left untouched (not rewritten).
    """
    plain_file = pq.ParquetFile(path)
    check_patient_sequence_schema(plain_file.schema_arrow, path)
    if plain_file.metadata.num_rows == 0:
        return False
    source = _SequenceFile.open(path, plain_file, tokens_per_batch)
    schema = source.schema
    fill_columns = [name for name in NULL_FILLS if fill_nulls and name in schema.names
                    and is_list_type(schema.field(name).type)]
    distinct_tokens, null_items = _distinct_tokens_and_null_items(source, fill_columns)
    token_kinds = oracle.to_remove(distinct_tokens)
    if not token_kinds and not null_items:
        return False
    malformed = pa.array(sorted(token_kinds), pa.string())
    file_report = CleanupReport()
    file_report.files_changed.append(path)
    cleaned_batches = (fill_null_items(clean_batch(batch, malformed, file_report, token_kinds), file_report, fill_columns)
                       for batch in source.batches())
    if dry_run:
        for _counted in cleaned_batches:  # a dry run only counts what it would remove
            continue
    else:
        _replace_file(path, source, cleaned_batches)
    report.add(file_report)
    return True


@dataclass
class _SequenceFile:
    """A patient_sequence Parquet file opened for streaming, and what a rewrite must keep of it."""

    reader: pq.ParquetFile
    schema: pa.Schema
    key_value_metadata: dict
    compression: str | None  # the writer's codec: the first column's, None when uncompressed
    spark_written: bool
    batch_rows: int

    @classmethod
    def open(cls, path: Path, plain_file: pq.ParquetFile, tokens_per_batch: int) -> _SequenceFile:
        metadata = plain_file.metadata
        compression = metadata.row_group(0).column(0).compression.lower()
        key_value_metadata = metadata.metadata or {}
        # Spark's files (step 2) carry no Arrow schema: their Parquet schema alone reads back as the same
        # Arrow schema. Then strings are read as dictionary indices and written back as such, which skips
        # building and re-hashing every string (most of a rewrite's cost). Files from pyarrow are read
        # and written the plain way, with their Arrow schema.
        spark_written = b"ARROW:schema" not in key_value_metadata
        string_columns = [column.path for column in plain_file.schema if column.physical_type == "BYTE_ARRAY"]
        # A buffered stream, not pre-buffered (pyarrow's default): it reads the pages a batch needs, not a
        # whole row group up front, which for a big part file would take gigabytes.
        reader = pq.ParquetFile(path, read_dictionary=string_columns if spark_written else None,
                                buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        token_leaf = next(index for index, column in enumerate(plain_file.schema)
                          if column.path.split(".")[0] == SEQUENCE_TOKEN_COLUMN)
        return cls(reader, plain_file.schema_arrow, key_value_metadata,
                   None if compression == "uncompressed" else compression, spark_written,
                   _rows_per_batch(metadata, token_leaf, tokens_per_batch))

    def batches(self, columns: list[str] | None = None):
        return _record_batches(self.reader, self.batch_rows, columns)


def _distinct_tokens_and_null_items(source: _SequenceFile, fill_columns: list[str]) -> tuple[set, int]:
    """The first pass: the file's distinct tokens, and how many null items the fill columns hold."""
    distinct_tokens = set()
    null_items = 0
    for batch in source.batches(columns=[SEQUENCE_TOKEN_COLUMN, *fill_columns]):
        flat = batch.column(SEQUENCE_TOKEN_COLUMN).flatten()
        if pa.types.is_dictionary(flat.type):
            # Only the entries in use (a row group's dictionary may hold values of rows outside this batch).
            distinct_tokens.update(flat.dictionary.take(pc.unique(flat.indices).drop_null()).to_pylist())
        else:
            distinct_tokens.update(pc.unique(flat).to_pylist())
        null_items += sum(batch.column(name).flatten().null_count for name in fill_columns)
    return distinct_tokens, null_items


def _replace_file(path: Path, source: _SequenceFile, cleaned_batches) -> None:
    """Write the cleaned batches beside `path` and rename them over it, with the same schema, metadata,
    codec and permissions; its Hadoop .crc, if any, is replaced too (see _prepare_hadoop_checksum)."""
    new_checksum = None
    try:
        with atomic_file(path, suffix=".parquet") as temporary:
            _write_batches(temporary, source, cleaned_batches)
            written_schema = pq.read_schema(temporary)
            if not written_schema.equals(source.schema, check_metadata=True):
                raise PipelineError(f"{path}: the cleaned file would not keep the original schema "
                                    f"({written_schema} vs {source.schema}); left unchanged")
            shutil.copymode(path, temporary)  # keep the original's permissions (mkstemp makes 0600)
            new_checksum = _prepare_hadoop_checksum(path, temporary)
    except BaseException:
        if new_checksum is not None:
            new_checksum.unlink(missing_ok=True)
        raise
    if new_checksum is not None:
        os.replace(new_checksum, hadoop_checksum_path(path))


def _write_batches(temporary: Path, source: _SequenceFile, cleaned_batches) -> None:
    """A Parquet file of the batches, written as the source was: Spark's files without an Arrow schema
    and with their key-value metadata, pyarrow's with theirs."""
    writer = None
    try:
        for cleaned in cleaned_batches:
            if writer is None:
                writer_schema = cleaned.schema.with_metadata(source.schema.metadata)
                writer = pq.ParquetWriter(temporary, writer_schema, store_schema=not source.spark_written,
                                          compression=source.compression)
            writer.write_batch(cleaned)
        if source.spark_written and source.key_value_metadata:
            writer.add_key_value_metadata(source.key_value_metadata)
    finally:
        if writer is not None:
            writer.close()


def _record_batches(parquet_file: pq.ParquetFile, batch_rows: int, columns: list[str] | None = None):
    """The file's record batches, row group by row group: a batch spanning two row groups would hold two
    dictionaries per string column, which pyarrow cannot return for a list column."""
    for group in range(parquet_file.metadata.num_row_groups):
        yield from parquet_file.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)


def _rows_per_batch(metadata, token_leaf: int, tokens_per_batch: int) -> int:
    """Rows holding about `tokens_per_batch` tokens, from the file's metadata (tokens per row group)."""
    tokens = sum(metadata.row_group(group).column(token_leaf).num_values
                 for group in range(metadata.num_row_groups))
    tokens_per_row = max(1, tokens // max(1, metadata.num_rows))
    return max(1, tokens_per_batch // tokens_per_row)


ABANDONED_TEMPORARY = re.compile(r"^\..+\.tmp(\.parquet)?$")  # atomic_file's and _prepare_hadoop_checksum's


def clean_folder(folder: Path, jobs: int, dry_run: bool) -> tuple[CleanupReport, list[Path]]:
    """Clean every patient_sequence file under `folder`, a few files at once; returns the report and the files.

    Every file is checked first, so a stray non-sequence file stops the run before anything changes.
    Files are independent: Parquet decoding and encoding run in pyarrow's C++ without the GIL, and
    writing a file is single-threaded, so threads use the other cores. On an error or Ctrl-C, files
    being written finish (each one atomically) and queued ones never start.
    """
    if not dry_run:
        remove_abandoned_temporaries(folder)
    files = parquet_files(folder)
    if not files:
        raise PipelineError(f"no Parquet files under {folder}")
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as error:
            raise PipelineError(f"{path} is not a readable Parquet file: {error}") from None
        check_patient_sequence_schema(schema, path)

    oracle = TokenOracle()
    report = CleanupReport()

    def clean_one(path: Path) -> CleanupReport:
        file_report = CleanupReport()
        clean_file(path, oracle, file_report, dry_run)
        return file_report

    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(files))))
    try:
        for file_report in tqdm(pool.map(clean_one, files), total=len(files), unit="file",
                                desc="checking" if dry_run else "cleaning", disable=len(files) < 2):
            report.add(file_report)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return report, files


def remove_abandoned_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed cleanup left (hidden, so no reader saw them). Call it holding
    the folder's lock: otherwise they could be another cleanup's files in progress."""
    for path in folder.rglob(".*.tmp*"):
        if ABANDONED_TEMPORARY.match(path.name) and path.is_file():
            path.unlink()


def hadoop_checksum_path(path: Path) -> Path:
    """Spark (Hadoop's local file system) keeps a CRC file beside each part file: .part-0000.parquet.crc."""
    return path.with_name(f".{path.name}.crc")


def write_hadoop_checksum(data_path: Path, checksum_path: Path, bytes_per_checksum: int = 512) -> None:
    """Hadoop's .crc format: b'crc\\0', the chunk size (big-endian int), then a CRC-32 per chunk."""
    with open(data_path, "rb") as data, open(checksum_path, "wb") as checksums:
        checksums.write(HADOOP_CRC_MAGIC + struct.pack(">i", bytes_per_checksum))
        while block := data.read(bytes_per_checksum * 4096):
            view = memoryview(block)
            crcs = array.array("I", [zlib.crc32(view[start:start + bytes_per_checksum])
                                     for start in range(0, len(block), bytes_per_checksum)])
            if sys.byteorder == "little":
                crcs.byteswap()  # big-endian on disk
            checksums.write(crcs.tobytes())


def _prepare_hadoop_checksum(path: Path, temporary: Path) -> Path | None:
    """When `path` has a Hadoop .crc, write the new file's checksums beside it and remove the old ones.

    Spark refuses a file whose .crc does not match ("ChecksumException"), and reads one without a
    .crc unchecked. So the old .crc goes before the file is renamed, the new one after: whenever the
    run stops, each file has a matching .crc or none. Returns the temporary new .crc (or None).
    """
    checksum = hadoop_checksum_path(path)
    if not checksum.exists():
        return None
    header = checksum.read_bytes()[:8]
    bytes_per_checksum = struct.unpack(">i", header[4:8])[0] if header[:4] == HADOOP_CRC_MAGIC else 512
    descriptor, name = tempfile.mkstemp(prefix=f"{checksum.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        write_hadoop_checksum(temporary, Path(name), max(1, bytes_per_checksum))
        shutil.copymode(checksum, name)  # Spark's own permissions, not mkstemp's 0600
        checksum.unlink()
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
