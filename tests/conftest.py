"""Session fixtures that start real servers (nats-server with JetStream, PostgreSQL) on free
ports in temporary folders. Integration and e2e tests use them; unit tests never do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from regio_devstack.servers import NatsServer, PostgresServer


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def fresh_database_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's PostgreSQL, for one test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)
