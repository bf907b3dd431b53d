"""The dev stack runs production's NATS users, and keeps its secrets per data folder.

`make run` and the e2e tests start nats-server with a configuration generated from
deploy/k8s/base/nats.conf, so that a permission a service lacks in production is missing under
`make run` too; its credentials are generated once per data folder, readable by the owner only."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from regio_devstack.credentials import (
    NATS_PASSWORDS_FILE,
    NATS_SERVICE_USERS,
    SECRETS_FILE,
    StackCredentials,
)
from regio_devstack.servers import (
    BASE_NATS_CONF,
    NatsServer,
    nats_config_users,
    single_node_nats_config,
)
from tests.unit.deploy.rendering import BASE

PRODUCTION = (BASE / "nats.conf").read_text()


def dev_config(production: str = PRODUCTION, **overrides: object) -> str:
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 14222,
        "store_dir": Path("/data/dev/nats"),
        "pid_file": Path("/data/dev/nats/nats.pid"),
        "full_access_users": ("ops",),
    }
    options.update(overrides)
    return single_node_nats_config(production, **options)  # type: ignore[arg-type]


def accounts_block(config: str) -> str:
    return config[config.index("\naccounts {") :]


def test_the_dev_stack_reads_the_production_file() -> None:
    assert BASE_NATS_CONF.resolve() == (BASE / "nats.conf").resolve()


def test_dev_users_and_permissions_are_production_s_plus_ops() -> None:
    config = dev_config()
    assert nats_config_users(config) == [*NATS_SERVICE_USERS, "ops"]
    ops = re.search(r"\n      \{\n[^{}]*user: ops\n[^{}]*\}\n", config)
    assert ops is not None, "ops is a user block of its own"
    assert "permissions" not in ops.group(0)  # full access within the account
    assert "password: $NATS_OPS_PASSWORD" in ops.group(0)
    # Everything else about the users is the production text, byte for byte.
    without_ops = config.replace(ops.group(0), "\n")
    assert accounts_block(without_ops) == accounts_block(PRODUCTION)


def test_dev_server_is_one_local_node_storing_in_the_data_folder() -> None:
    config = dev_config()
    assert "cluster {" not in config and "nats-headless" not in config
    assert config.startswith("# Generated from deploy/k8s/base/nats.conf")
    assert re.search(r"^host: 127\.0\.0\.1$", config, re.M)
    assert re.search(r"^port: 14222$", config, re.M)
    assert re.search(r"^\s+store_dir: /data/dev/nats$", config, re.M)
    assert re.search(r"^pid_file: /data/dev/nats/nats\.pid$", config, re.M)
    assert "$POD_NAME" not in config
    assert "http_port" not in config  # no monitoring listener unless asked
    assert re.search(r"^http_port: 18222$", dev_config(monitoring_port=18222), re.M)
    # JetStream as in production (fsync on every write)
    assert re.search(r"^\s+sync_interval: always$", config, re.M)


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda text: re.sub(r"^cluster \{.*?^\}\n", "", text, flags=re.S | re.M), "cluster"),
        (lambda text: text.replace("store_dir:", "storage_dir:"), "store_dir"),
        (lambda text: text.replace("port: 4222", "listen: 0.0.0.0:4222"), "client port"),
        (lambda text: text.replace("users: [", "users = ["), "users list"),
    ],
)
def test_a_production_file_of_another_shape_is_refused(edit: object, what: str) -> None:
    """If nats.conf changes shape, generating the dev config fails instead of running a server
    that differs from production."""
    changed = edit(PRODUCTION)  # type: ignore[operator]
    assert changed != PRODUCTION
    with pytest.raises(ValueError, match=what):
        dev_config(changed)


def test_every_user_needs_a_password_and_no_stranger_gets_one(tmp_path: Path) -> None:
    passwords = {user: "pw" for user in NATS_SERVICE_USERS}
    with pytest.raises(ValueError, match="passwords"):  # none for ops
        NatsServer(
            tmp_path, config_from=BASE_NATS_CONF, passwords=passwords, full_access_users=("ops",)
        )
    with pytest.raises(ValueError, match="passwords"):  # eve is no user of the file
        NatsServer(tmp_path, config_from=BASE_NATS_CONF, passwords={**passwords, "eve": "y"})
    server = NatsServer(
        tmp_path,
        port=14222,
        config_from=BASE_NATS_CONF,
        passwords={**passwords, "ops": "pw-ops"},
        full_access_users=("ops",),
    )
    assert server.url == "nats://127.0.0.1:14222"
    assert server.url_for("ops") == "nats://ops:pw-ops@127.0.0.1:14222"
    # Passwords reach the server through its environment only.
    assert server.process.env is not None
    assert server.process.env["NATS_WORKER_PASSWORD"] == "pw"
    assert "pw-ops" not in " ".join(server.process.argv)
    with pytest.raises(KeyError):
        server.url_for("eve")


def test_a_server_without_configuration_has_no_users(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, port=14222)
    assert "--jetstream" in server.process.argv
    with pytest.raises(KeyError):
        server.url_for("gateway")


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_are_made_once_per_data_folder_and_private(tmp_path: Path) -> None:
    first = StackCredentials.load_or_create(tmp_path)
    again = StackCredentials.load_or_create(tmp_path)
    assert again == first
    assert sorted(first.billing_tokens) == ["dashboard", "gateway"]
    assert sorted(first.nats_passwords) == sorted([*NATS_SERVICE_USERS, "ops"])
    values = first.values()
    assert len(set(values)) == len(values) == 1 + 1 + 2 + 5  # all distinct
    assert all(len(value) >= 24 for value in values)
    for name in ("admin-token", SECRETS_FILE, NATS_PASSWORDS_FILE):
        assert private(tmp_path / name), name
    other = StackCredentials.load_or_create(tmp_path / "other")
    assert set(other.values()).isdisjoint(values)


def test_nats_passwords_are_safe_in_a_url(tmp_path: Path) -> None:
    for password in StackCredentials.load_or_create(tmp_path).nats_passwords.values():
        assert re.fullmatch(r"[0-9a-f]+", password)


def test_a_secret_missing_from_an_older_data_folder_is_added(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("adm-kept-from-before")
    (tmp_path / NATS_PASSWORDS_FILE).write_text(json.dumps({"gateway": "kept"}))
    credentials = StackCredentials.load_or_create(tmp_path)
    assert credentials.admin_token == "adm-kept-from-before"
    assert credentials.nats_passwords["gateway"] == "kept"
    assert len(credentials.nats_passwords["worker"]) == 48
    assert json.loads((tmp_path / NATS_PASSWORDS_FILE).read_text()) == credentials.nats_passwords
    assert private(tmp_path / NATS_PASSWORDS_FILE)
