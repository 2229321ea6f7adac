"""A real PostgreSQL 15 server for the tests: initdb + pg_ctl on a free loopback port in a temp dir.

The production Dagster instance (deploy/dagster.yaml) keeps runs, events and schedules in
Postgres; the tests run it against the machine image's Debian PostgreSQL, never a stand-in.
Postgres refuses to run as root, so when the tests run as root (CI does) the server runs as
`nobody` through `runuser`, in a temp dir outside pytest's root-only tmp tree. As against RDS:
TCP only over TLS (a throwaway self-signed certificate; `hostssl` is the only host rule, so a
client that does not ask for TLS is refused) and password auth (scram-sha-256); the password
reaches Dagster only from the environment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from eventreach_assets_tests.stand_ins import free_port

PG_BIN = Path(os.environ.get("EVENTREACH_PG_BIN", "/usr/lib/postgresql/15/bin"))
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_SECONDS = 60  # pg_ctl -w waits for the server this long, then fails


@dataclass(frozen=True)
class PostgresServer:
    """Where the server listens and how to log in (the database exists, the user owns it)."""

    host: str
    port: int
    db_name: str
    username: str
    password: str

    @property
    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its storage settings from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db_name,
            "DAGSTER_PG_USERNAME": self.username,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect_args(self, db_name: str) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "dbname": db_name, "user": self.username,
                "password": self.password, "sslmode": "require", "connect_timeout": 10}  # fmt: skip

    def create_database(self, name: str) -> PostgresServer:
        """A new empty database on this server (one per test: each gets a fresh Dagster instance)."""
        import psycopg2

        connection = psycopg2.connect(**self.connect_args("postgres"))
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return replace(self, db_name=name)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Rows of one query, through psycopg2 (what dagster-postgres itself uses)."""
        import psycopg2

        connection = psycopg2.connect(**self.connect_args(self.db_name))
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            connection.close()


def _as_server_user(args: list[str]) -> list[str]:
    """`args` as the unprivileged user when we are root (Postgres refuses root), else unchanged."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", UNPRIVILEGED_USER, "--", *args]


def _self_signed_certificate(base: Path) -> None:
    """server.crt + server.key (0600, the server user's) in `base`, valid for a day."""
    _run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(base / "server.key"), "-out", str(base / "server.crt")],
        "openssl req", as_server_user=False,
    )  # fmt: skip
    (base / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        for name in ("server.key", "server.crt"):
            shutil.chown(base / name, UNPRIVILEGED_USER)


def _run(args: list[str], what: str, timeout: float = 120, as_server_user: bool = True) -> None:
    command = _as_server_user(args) if as_server_user else args
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout[-2_000:]}{result.stderr[-2_000:]}")


@contextmanager
def postgres_server(db_name: str = "dagster", username: str = "dagster") -> Iterator[PostgresServer]:
    """Start a fresh cluster on 127.0.0.1 (bounded waits) and yield it; stopped and deleted on exit."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).is_file()]
    if missing:
        raise RuntimeError(
            f"PostgreSQL 15 server binaries missing from {PG_BIN} ({', '.join(missing)}): the production instance "
            "tests need them (Debian: apt-get install postgresql-15; or set EVENTREACH_PG_BIN)"
        )
    base = Path(tempfile.mkdtemp(prefix="eventreach-pg-"))  # under /tmp: pytest's tmp tree is root-only
    data, sockets, password_file = base / "data", base / "sockets", base / "password"
    sockets.mkdir()
    password = secrets.token_urlsafe(24)
    password_file.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, UNPRIVILEGED_USER)
        for path in (sockets, password_file):
            shutil.chown(path, UNPRIVILEGED_USER)
    port = free_port()
    server = PostgresServer("127.0.0.1", port, db_name, username, password)
    started = False
    try:
        _run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", username, f"--pwfile={password_file}",
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
            "initdb",
        )  # fmt: skip
        _self_signed_certificate(base)
        (data / "pg_hba.conf").write_text(  # TLS or nothing over TCP; the unix socket only for pg_ctl
            f"local all {username} scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} -c fsync=off "
            f"-c ssl=on -c ssl_cert_file={base / 'server.crt'} -c ssl_key_file={base / 'server.key'}"
        )
        _run(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options,
             "-w", "-t", str(START_TIMEOUT_SECONDS), "start"],
            "pg_ctl start", timeout=START_TIMEOUT_SECONDS + 30,
        )  # fmt: skip
        started = True
        yield server.create_database(db_name)
    finally:
        if started:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                     "pg_ctl stop", timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
