"""A throwaway PostgreSQL cluster for the lab: Debian's server binaries, run as a non-root user under a temp dir.

    with ThrowawayPostgres(root) as database:
        database.url("keylime")      # postgresql+psycopg2://keylime:<password>@127.0.0.1:<port>/keylime

initdb and pg_ctl refuse to run as root, so the cluster belongs to an unprivileged user (`nobody` by
default); it listens on 127.0.0.1 only (the tests run in a private network namespace) on a free port or
the one given, and clients authenticate with a password (scram-sha-256), as against a real server.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import socket
import subprocess
from pathlib import Path

from components.postgres import database_url

START_TIMEOUT = 60
COMMAND_TIMEOUT = 120
# Debian installs the server's programs per major version, off PATH.
SERVER_BINARIES = "/usr/lib/postgresql/*/bin"
LISTEN_ADDRESS = "127.0.0.1"


class PostgresUnavailable(RuntimeError):  # noqa: N818 (a state of this machine, as `except PostgresUnavailable` reads)
    """Debian's PostgreSQL server is not installed."""


def server_bin() -> Path:
    found = sorted(glob.glob(f"{SERVER_BINARIES}/initdb"))
    if not found:
        raise PostgresUnavailable("the lab needs PostgreSQL's server (initdb, pg_ctl): apt-get install postgresql")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LISTEN_ADDRESS, 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    def __init__(self, root: Path, user: str = "nobody", port: int | None = None):
        self.bin = server_bin()
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.owner = pwd.getpwnam(user)
        self.port = port or free_port()
        self.passwords: dict[str, str] = {}
        self.started = False

    def _as_owner(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        command = ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--clear-groups", "--", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C.UTF-8"}, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def start(self) -> ThrowawayPostgres:
        self.root.mkdir(parents=True)
        for directory in (self.root, self.socket_dir):
            directory.mkdir(exist_ok=True)
            os.chown(directory, self.owner.pw_uid, self.owner.pw_gid)
            directory.chmod(0o700)
        # The superuser authenticates over the private socket directory only; everyone else by password over TCP.
        superuser_password = self.root / "superuser-password"
        superuser_password.write_text(secrets.token_hex(16))
        os.chown(superuser_password, self.owner.pw_uid, self.owner.pw_gid)
        self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.owner.pw_name, "--auth-local=peer",
                       "--auth-host=scram-sha-256", f"--pwfile={superuser_password}", "-E", "UTF8", "--no-sync")
        self._as_owner(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
            "-t", str(START_TIMEOUT), "start",
            "-o", f"-c listen_addresses={LISTEN_ADDRESS} -c port={self.port} -c unix_socket_directories={self.socket_dir} "
                  "-c fsync=off -c max_connections=200",
        )
        self.started = True
        return self

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (over the socket, peer-authenticated as the cluster's owner); rows as
        lines, columns separated by |."""
        return self._as_owner(
            str(self.bin / "psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.owner.pw_name,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            statement,
        ).stdout

    def create_database(self, name: str, password: str | None = None) -> str:
        """A role and a database of the same name, the role owning it with `password` (by default a fresh one);
        returns its URL."""
        password = password or secrets.token_hex(16)
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE {name} OWNER {name}")
        self.passwords[name] = password
        return self.url(name)

    def url(self, name: str) -> str:
        """The URL keylime's `database_url` takes, composed as the program composes its own."""
        return database_url(name, self.passwords[name], LISTEN_ADDRESS, self.port, name)

    def stop(self) -> None:
        if self.started:
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
