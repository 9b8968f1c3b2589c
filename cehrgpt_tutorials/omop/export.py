"""Exporting OMOP tables from PostgreSQL to Spark-readable Parquet folders: export_omop.py's work.

- Streaming: `COPY (SELECT ...) TO STDOUT (FORMAT csv)` flows through a pipe into pyarrow's CSV reader
  and out through a ParquetWriter, so memory stays bounded whatever the table's size (stream_table).
- Types come from the database catalog, never from the data (arrow_type_for); NULL and the empty
  string stay different.
- One consistent snapshot: every table is read in one REPEATABLE READ, READ ONLY transaction, shared
  by the --jobs connections (pg_export_snapshot), so a visit never comes without its person.
- Atomic per table: each is written into a hidden folder beside its target and swapped in when
  complete, so a failure or Ctrl-C leaves the earlier export as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.db import connect, resolve_connection
from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import atomic_directory
from cehrgpt_tutorials.locks import output_lock

# The seed's tables, plus the optional ones cehrbert_data uses when they exist.
DEFAULT_TABLES = [
    "person",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "concept",
    "concept_ancestor",
    "concept_relationship",
]
OPTIONAL_DEFAULT_TABLES = ["death", "measurement"]

DEFAULT_ROWS_PER_FILE = 1_000_000
# Batches are gathered into row groups of about this many bytes (in memory) before writing: a row
# group per 4 MB CSV block would make files that read slowly; much bigger costs memory.
ROW_GROUP_BYTES = 32 << 20
CSV_BLOCK_BYTES = 4 << 20
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031  # Linux fcntl: a larger pipe means fewer wake-ups between the two threads

# Columns where at least this fraction of the rows are distinct values are written without a dictionary.
MOSTLY_DISTINCT = 0.3

# Relation kinds we can SELECT from: table, partitioned table, view, materialized view, foreign table.
READABLE_RELKINDS = ("r", "p", "v", "m", "f")


# ---------------------------------------------------------------------------------------------
# Catalog: which tables exist, their columns and the Arrow type of each column.
# ---------------------------------------------------------------------------------------------


def arrow_type_for(base_type_name: str):
    """The Arrow type a PostgreSQL base type is stored as (anything not listed travels as text).

    numeric becomes float64, as cehrbert_data and Spark want numbers, not decimals; timestamps are in
    microseconds, as Spark 3.1 reads pandas' nanosecond timestamps as bigint."""
    import pyarrow as pa

    return {
        "int2": pa.int16(),
        "int4": pa.int32(),
        "int8": pa.int64(),
        "float4": pa.float32(),
        "float8": pa.float64(),
        "numeric": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", tz="UTC"),
    }.get(base_type_name, pa.string())


# Spark 3.1 refuses to read Parquet columns whose names contain any of these characters.
SPARK_INVALID_NAME_CHARACTERS = re.compile(r"[ ,;{}()\n\t=]")


def parquet_column_name(name: str) -> str:
    """Lower case (what cehrbert_data expects), with the characters Spark cannot read as '_'."""
    return SPARK_INVALID_NAME_CHARACTERS.sub("_", name.lower())


@dataclass
class Column:
    name: str  # as in the database
    declared_type: str  # format_type(): "character varying(50)", "numeric(10,2)", ...
    base_type: str  # pg_type.typname after resolving domains: "varchar", "int4", ...
    # Parquet dictionary encoding pays off for repeated values (concept ids, codes) but only costs
    # time and space on columns that are mostly distinct (row ids): told apart by ANALYZE's estimate.
    dictionary: bool = True

    @property
    def parquet_name(self) -> str:
        return parquet_column_name(self.name)


@dataclass
class TableExport:
    name: str  # as in the database
    folder_name: str  # lower case: Spark and cehrbert_data look for lower-case folders
    columns: list[Column]
    estimated_rows: int | None
    estimated_bytes: int
    rows: int = 0
    seconds: float = 0.0
    megabytes: float = 0.0
    files: int = 0


def readable_relations(connection, schema: str) -> dict[str, tuple[int, float, int]]:
    """name -> (oid, reltuples, relpages) for every table and view in `schema`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.oid, c.reltuples, c.relpages FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = ANY(%s) ORDER BY c.relname",
            (schema, list(READABLE_RELKINDS)),
        )
        return {name: (oid, reltuples, relpages) for name, oid, reltuples, relpages in cursor.fetchall()}


def schema_exists(connection, schema: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        return cursor.fetchone() is not None


def table_columns(connection, relation_oid: int) -> list[Column]:
    """The table's columns in order, with their declared type and base type (domains resolved)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
            "       CASE WHEN t.typtype = 'd' THEN base.typname ELSE t.typname END, "
            # n_distinct < 0 is minus the fraction of distinct rows (-1: unique); NULL: never analyzed.
            "       (SELECT s.n_distinct FROM pg_stats s WHERE s.schemaname = n.nspname "
            "        AND s.tablename = c.relname AND s.attname = a.attname ORDER BY s.inherited DESC LIMIT 1) "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_type base ON base.oid = t.typbasetype "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (relation_oid,),
        )
        return [
            Column(name, declared, base, dictionary=not (n_distinct is not None and n_distinct <= -MOSTLY_DISTINCT))
            for name, declared, base, n_distinct in cursor.fetchall()
        ]


def shorten(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "(none)"


def resolve_tables(connection, schema: str, requested: list[str] | None) -> list[TableExport]:
    """Check schema and table names against the catalog; raise PipelineError naming what is missing."""
    if not schema_exists(connection, schema):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' "
                "AND nspname <> 'information_schema' ORDER BY 1"
            )
            schemas = [row[0] for row in cursor.fetchall()]
        raise PipelineError(f"schema {schema} not found; schemas: {shorten(schemas)}")
    relations = readable_relations(connection, schema)
    if requested is None:
        names = DEFAULT_TABLES + [name for name in OPTIONAL_DEFAULT_TABLES if name in relations]
    else:
        names = requested

    tables: list[TableExport] = []
    for requested_name in names:
        name = requested_name
        if name not in relations:
            # Like psql, an unquoted PERSON means person; only fall back when it is unambiguous.
            folded = [candidate for candidate in relations if candidate.lower() == name.lower()]
            if len(folded) != 1:
                raise PipelineError(
                    f"table {schema}.{requested_name} not found; tables in {schema}: {shorten(list(relations))}"
                )
            name = folded[0]
        folder_name = name.lower()
        # The folder name becomes a path: refuse names that would escape the output folder or hide.
        if "/" in folder_name or "\\" in folder_name or folder_name.startswith(".") or "\0" in folder_name:
            raise PipelineError(
                f"table {schema}.{name}: its name cannot be a folder name (it contains '/' or '\\' "
                "or starts with '.'); rename it or export it through a view"
            )
        oid, reltuples, relpages = relations[name]
        columns = table_columns(connection, oid)
        if not columns:
            raise PipelineError(f"table {schema}.{name} has no columns")
        parquet_names = [column.parquet_name for column in columns]
        duplicated = sorted({n for n in parquet_names if parquet_names.count(n) > 1})
        if duplicated:
            raise PipelineError(
                f"table {schema}.{name}: several columns would all be written as {', '.join(duplicated)} "
                "(Parquet names are lower case, with ' ,;{}()=' and tabs/newlines replaced by '_')"
            )
        tables.append(
            TableExport(
                name=name,
                folder_name=folder_name,
                columns=columns,
                estimated_rows=int(reltuples) if reltuples and reltuples > 0 else None,
                estimated_bytes=int(relpages) * 8192,
            )
        )
    folders = [table.folder_name for table in tables]
    repeated = sorted({f for f in folders if folders.count(f) > 1})
    if repeated:
        raise PipelineError(f"tables listed twice (or differing only in case): {', '.join(repeated)}")
    return tables


# ---------------------------------------------------------------------------------------------
# Output folders: never overwrite something that is not a Parquet table folder (what a killed run
# left behind is cleaned up by files.atomic_directory).
# ---------------------------------------------------------------------------------------------


def check_replaceable(target: Path) -> None:
    """Refuse to replace a folder that holds anything but Parquet part files (e.g. the database)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise PipelineError(f"{target} exists and is not a folder; not overwriting it")
    foreign = [
        entry.name
        for entry in target.iterdir()
        if not entry.name.startswith((".", "_")) and not (entry.is_file() and entry.name.endswith(".parquet"))
    ]
    if foreign:
        raise PipelineError(
            f"{target} exists and holds more than Parquet part files ({shorten(sorted(foreign), 5)}); "
            "not overwriting it: move it away or choose another --output-dir"
        )


# ---------------------------------------------------------------------------------------------
# One table: COPY -> pipe -> pyarrow CSV reader -> ParquetWriter, into a temporary folder.
# ---------------------------------------------------------------------------------------------


class Stopped(Exception):
    """Another table failed or the export was interrupted: this one must not be swapped in."""


def copy_statement(schema: str, table: TableExport):
    from psycopg2 import sql

    # CSV with NULL as an unquoted empty field: PostgreSQL then quotes empty strings (""), which
    # the reader keeps apart from NULL (quoted_strings_can_be_null=False).
    return sql.SQL("COPY (SELECT {columns} FROM {schema}.{table}) TO STDOUT WITH (FORMAT csv)").format(
        columns=sql.SQL(", ").join(sql.Identifier(column.name) for column in table.columns),
        schema=sql.Identifier(schema),
        table=sql.Identifier(table.name),
    )


def csv_reader_options(table: TableExport):
    import pyarrow.csv as pa_csv

    names = [column.parquet_name for column in table.columns]
    read_options = pa_csv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES)
    # An all-NULL row of a one-column table is an empty line: it is a row, not something to skip.
    parse_options = pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    convert_options = pa_csv.ConvertOptions(
        column_types={name: arrow_type_for(column.base_type) for name, column in zip(names, table.columns, strict=True)},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )
    return read_options, parse_options, convert_options


def arrow_schema(table: TableExport):
    import pyarrow as pa

    return pa.schema([(column.parquet_name, arrow_type_for(column.base_type)) for column in table.columns])


def explain_conversion_error(error: Exception, table: TableExport) -> str:
    """Arrow says 'column #3'; name the column and its declared type instead."""
    message = " ".join(str(error).split())
    match = re.search(r"column #(\d+)", message)
    if match and int(match.group(1)) < len(table.columns):
        column = table.columns[int(match.group(1))]
        message = message.replace(match.group(0), f"column {column.name} ({column.declared_type})")
    return message


class PartWriter:
    """Writes record batches into part-00000.parquet, part-00001.parquet, ... of one folder."""

    def __init__(self, folder: Path, schema, rows_per_file: int, dictionary_columns: list[str]):
        self.folder, self.schema, self.rows_per_file = folder, schema, rows_per_file
        self.options = {"compression": "snappy", "use_dictionary": dictionary_columns}
        self.writer = None
        self.file_index = 0
        self.rows_in_file = 0
        self.pending, self.pending_bytes = [], 0

    def write(self, batch) -> None:
        while batch.num_rows:
            room = self.rows_per_file - self.rows_in_file - sum(b.num_rows for b in self.pending)
            head, batch = batch.slice(0, room), batch.slice(room)
            self.pending.append(head)
            self.pending_bytes += head.nbytes
            if self.rows_in_file + sum(b.num_rows for b in self.pending) >= self.rows_per_file:
                self.flush()
                self.close_file()
            elif self.pending_bytes >= ROW_GROUP_BYTES:
                self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        if self.writer is None:
            path = self.folder / f"part-{self.file_index:05d}.parquet"
            self.writer = pq.ParquetWriter(path, self.schema, **self.options)
        row_group = pa.Table.from_batches(self.pending, schema=self.schema)
        self.writer.write_table(row_group, row_group_size=row_group.num_rows)
        self.rows_in_file += row_group.num_rows
        self.pending, self.pending_bytes = [], 0

    def close_file(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.file_index += 1
            self.rows_in_file = 0

    def close(self) -> None:
        self.flush()
        if self.writer is None and self.file_index == 0:
            # An empty table still gets one (empty) file, so readers learn its columns and types.
            import pyarrow.parquet as pq

            pq.ParquetWriter(self.folder / "part-00000.parquet", self.schema, **self.options).close()
            self.file_index = 1
        self.close_file()


def stream_table(
    connection, schema: str, table: TableExport, folder: Path, rows_per_file: int, progress, stop: threading.Event
) -> int:
    """COPY one table into Parquet part files in `folder`; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    read_end, write_end = os.pipe()
    # Refused (a lower pipe size limit, not Linux): the default pipe works, only slower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_BYTES)
    copy_result: dict = {}

    def copy_into_pipe():
        # psycopg2 calls write() once per row: a C-level buffered writer keeps that cheap.
        pipe = os.fdopen(write_end, "wb", buffering=PIPE_BYTES)
        try:
            with connection.cursor() as cursor:
                cursor.copy_expert(copy_statement(schema, table), pipe)
                copy_result["rows"] = cursor.rowcount
        except BaseException as error:  # the reading side reports it
            copy_result["error"] = error
        finally:
            # Recorded before closing, so the reader's end-of-data comes after the outcome is known.
            with contextlib.suppress(BrokenPipeError):  # the reader stopped early and closed its end
                pipe.close()

    copier = threading.Thread(target=copy_into_pipe, name=f"copy-{table.name}", daemon=True)
    copier.start()
    read_options, parse_options, convert_options = csv_reader_options(table)
    dictionary_columns = [column.parquet_name for column in table.columns if column.dictionary]
    parts = PartWriter(folder, arrow_schema(table), rows_per_file, dictionary_columns)
    rows = 0
    read_error = None
    copy_failed_first = False
    try:
        with os.fdopen(read_end, "rb") as pipe:
            try:
                for batch in pa_csv.open_csv(pipe, read_options, parse_options, convert_options):
                    if stop.is_set():
                        raise Stopped
                    parts.write(batch)
                    rows += batch.num_rows
                    progress.update(batch.num_rows)
            except pa.ArrowInvalid as error:
                read_error = error
                copy_failed_first = "error" in copy_result
                if not copy_result:
                    cancel_copy(connection)  # bad data mid-table: stop the server sending the rest
    except BaseException:
        if not copy_result:
            cancel_copy(connection)
        copier.join(timeout=10)
        raise
    copier.join()
    if read_error is not None and not copy_failed_first:
        if not (copy_result.get("rows") == 0 and "Empty CSV" in str(read_error)):
            raise PipelineError(explain_conversion_error(read_error, table))
    if "error" in copy_result:
        raise copy_result["error"]
    parts.close()
    table.files = parts.file_index
    if copy_result["rows"] != rows:
        raise PipelineError(f"PostgreSQL sent {copy_result['rows']:,} rows but {rows:,} were read")
    return rows


def export_table(
    connection, schema: str, table: TableExport, output_dir: Path, rows_per_file: int, position: int,
    stop: threading.Event,
):
    from tqdm import tqdm

    target = output_dir / table.folder_name
    check_replaceable(target)
    started = time.monotonic()
    with tqdm(
        total=table.estimated_rows,
        desc=table.folder_name,
        unit=" rows",
        unit_scale=True,
        position=position,
        leave=False,
        dynamic_ncols=True,
        disable=None,  # no bars when stderr is not a terminal (logs, tests)
    ) as progress:
        with atomic_directory(target, "the exported table") as temporary:
            table.rows = stream_table(connection, schema, table, temporary, rows_per_file, progress, stop)
            table.megabytes = sum(path.stat().st_size for path in temporary.iterdir()) / 1e6
            if stop.is_set():  # interrupted at the last moment: keep the earlier export
                raise Stopped
    table.seconds = time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Connections sharing one snapshot, and the workers that drain the table queue.
# ---------------------------------------------------------------------------------------------


def use_utf8(connection) -> None:
    """UTF-8 for the CSV reader. Called before any transaction: on a connection whose encoding differs,
    psycopg2's set_client_encoding aborts the open transaction (and with it an imported snapshot)."""
    connection.set_client_encoding("UTF8")


def prepare_session(connection) -> None:
    """Output formats the CSV reader expects, whatever the server's or the user's settings."""
    with connection.cursor() as cursor:
        cursor.execute("SET DateStyle = 'ISO, YMD'")
        cursor.execute("SET TimeZone = 'UTC'")  # timestamptz as +00, no historical local offsets
        cursor.execute("SET extra_float_digits = 3")  # floats round-trip exactly
        cursor.execute("SET statement_timeout = 0")
        # A connection that finished its tables waits, idle in its transaction, for the others.
        cursor.execute("SET idle_in_transaction_session_timeout = 0")


def begin_snapshot(coordinator) -> None:
    """Start the one REPEATABLE READ, READ ONLY transaction every table is read in."""
    use_utf8(coordinator)
    coordinator.set_session(isolation_level="REPEATABLE READ", readonly=True)
    prepare_session(coordinator)


def open_workers(dsn: str | None, coordinator, count: int):
    """`count` more connections that read the coordinator's snapshot (pg_export_snapshot)."""
    if count <= 0:
        return []
    with coordinator.cursor() as cursor:
        cursor.execute("SELECT pg_export_snapshot()")
        snapshot = cursor.fetchone()[0]
    workers = []
    try:
        for _ in range(count):
            worker = connect(dsn, application_name="cehrgpt-export_omop", quiet=True)
            workers.append(worker)
            use_utf8(worker)
            worker.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with worker.cursor() as cursor:
                # Must be the transaction's first statement (psycopg2 has just sent BEGIN).
                cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            prepare_session(worker)
    except BaseException:
        close_all(workers)
        raise
    return workers


def close_all(connections) -> None:
    # Read only: nothing to commit, and the server ends an open transaction when its connection
    # closes. close() does not fail on a connection that is already broken or closed.
    for connection in connections:
        connection.close()


def cancel_copy(connection) -> None:
    """Ask the server to stop the COPY running on `connection`; one line on stderr if it cannot be asked."""
    import psycopg2

    try:
        connection.cancel()
    except psycopg2.Error as error:  # closed or broken connection: its COPY ends when it closes
        print(f"note: could not cancel a running COPY: {describe_error(error)}", file=sys.stderr, flush=True)


@dataclass
class Failure:
    table: str
    message: str
    interrupted: bool = False


def describe_error(error: BaseException) -> str:
    import psycopg2

    if isinstance(error, PipelineError):
        return str(error)
    if isinstance(error, psycopg2.Error):
        text = (error.pgerror or str(error) or type(error).__name__).strip()
        lines = [line for line in text.splitlines() if line.strip()]
        return " ".join((lines[0] if lines else type(error).__name__).split())
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename})" if error.filename else str(error)
    return f"{type(error).__name__}: {error}"


def run_exports(connections, schema: str, tables: list[TableExport], output_dir: Path, rows_per_file: int):
    """Export the tables over the connections (largest first); return the first failure or None."""
    from tqdm import tqdm

    work: queue.Queue = queue.Queue()
    for table in sorted(tables, key=lambda t: -t.estimated_bytes):
        work.put(table)
    stop = threading.Event()
    failures: list[Failure] = []
    failures_lock = threading.Lock()

    unfinished = [len(connections)]
    all_finished = threading.Event()

    def worker(connection, position):
        try:
            export_tables_from_queue(connection, position)
        finally:
            with failures_lock:
                unfinished[0] -= 1
                if unfinished[0] == 0:
                    all_finished.set()

    def export_tables_from_queue(connection, position):
        while not stop.is_set():
            try:
                table = work.get_nowait()
            except queue.Empty:
                return
            try:
                export_table(connection, schema, table, output_dir, rows_per_file, position, stop)
                tqdm.write(
                    f"  {table.folder_name}: {table.rows:,} rows, {table.megabytes:.1f} MB in {table.seconds:.1f} s"
                )
            except BaseException as error:
                with failures_lock:
                    cancelled = stop.is_set()
                    failures.append(Failure(table.name, describe_error(error), interrupted=cancelled))
                    stop.set()
                for other in connections:
                    if other is not connection:
                        cancel_copy(other)  # abort the COPY running there
                return

    for position, connection in enumerate(connections):
        threading.Thread(target=worker, args=(connection, position), name=f"export-{position}", daemon=True).start()
    # Not Thread.join(): in Python 3.10 a Ctrl-C that lands inside join() marks the still-running
    # thread as finished (bpo-45274), and we would exit before it cleaned up. Not a plain sleep
    # either: the kernel may hand SIGINT to any thread, and only a main thread woken by it (here
    # through the signal wakeup fd) stops the workers before they swap in a table.
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    previous_wakeup = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    try:
        while not all_finished.is_set():
            readable, _, _ = select.select([wakeup_read], [], [], 0.2)
            if readable:
                os.read(wakeup_read, 512)  # the signal's handler runs right after this
    except KeyboardInterrupt:
        with failures_lock:
            failures.insert(0, Failure("", "interrupted", interrupted=True))
            stop.set()
        for connection in connections:
            cancel_copy(connection)
        if not all_finished.wait(timeout=60):  # let each remove its temporary folder
            print("error: interrupted; a table did not stop within 60 s (the next export removes its "
                  "hidden temporary folder)", file=sys.stderr, flush=True)
            os._exit(130)  # a thread stuck in a COPY would block a normal exit
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wakeup_read)
        os.close(wakeup_write)
    first_real = [failure for failure in failures if not failure.interrupted]
    return first_real[0] if first_real else (failures[0] if failures else None)


def print_summary(tables: list[TableExport], output_dir: Path, seconds: float) -> None:
    width = max([len("table")] + [len(table.folder_name) for table in tables])
    print(f"\n{'table':<{width}}  {'rows':>13}  {'seconds':>8}  {'MB':>9}  files")
    for table in tables:
        print(
            f"{table.folder_name:<{width}}  {table.rows:>13,}  {table.seconds:>8.1f}  {table.megabytes:>9.1f}  {table.files:>5}"
        )
    total_rows = sum(table.rows for table in tables)
    total_megabytes = sum(table.megabytes for table in tables)
    print(f"{'total':<{width}}  {total_rows:>13,}  {seconds:>8.1f}  {total_megabytes:>9.1f}")
    print(f"exported {len(tables)} tables to {output_dir} in {seconds:.1f} s", flush=True)


INTERRUPTED = "interrupted; no table folder was left half-written (earlier exports are intact)"


def export(arguments) -> None:
    # One export per output folder: a second one stops here, naming the first.
    with output_lock(arguments.output_dir, "the export folder"):
        export_locked(arguments)


def export_locked(arguments) -> None:
    started = time.monotonic()
    connections = []
    try:
        # Resolved once, so the demo server is started (or found) once for all the connections.
        dsn = resolve_connection(arguments.dsn).dsn or None
        coordinator = connect(dsn, application_name="cehrgpt-export_omop")
        connections.append(coordinator)
        begin_snapshot(coordinator)
        # Checked inside the snapshot, so a table dropped meanwhile cannot slip through.
        tables = resolve_tables(coordinator, arguments.schema, arguments.tables)
        jobs = min(arguments.jobs, len(tables))
        connections += open_workers(dsn, coordinator, jobs - 1)
        output_dir = arguments.output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        for table in tables:
            renamed = [f"{column.name!r} -> {column.parquet_name}" for column in table.columns
                       if column.parquet_name != column.name.lower()]
            if renamed:
                print(f"note: {table.name}: columns renamed so Spark can read them: {', '.join(renamed)}")
        print(
            f"exporting {len(tables)} tables from schema {arguments.schema} to {output_dir} "
            f"({jobs} connection{'s' if jobs > 1 else ''}, one snapshot)",
            flush=True,
        )
        failure = run_exports(connections, arguments.schema, tables, output_dir, arguments.rows_per_file)
    finally:
        close_all(connections)
    if failure is not None:
        if failure.interrupted or not failure.table:
            raise KeyboardInterrupt
        raise PipelineError(f"table {arguments.schema}.{failure.table}: {failure.message}")
    print_summary(tables, output_dir, time.monotonic() - started)
