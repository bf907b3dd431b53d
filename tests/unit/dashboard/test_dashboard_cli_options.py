"""`regio admin` takes its connection options before or after `admin`, and the environment
fills in what is not given."""

from __future__ import annotations

import pytest

from regio_dashboard.cli import parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--token", "T", "--url", "http://d:1", "admin", "accounts", "list"],
        ["admin", "--token", "T", "--url", "http://d:1", "accounts", "list"],
    ],
)
def test_connection_options_work_on_either_side_of_admin(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.token, args.url, args.resource, args.action) == (
        "T",
        "http://d:1",
        "accounts",
        "list",
    )


def test_the_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("REGIO_DASHBOARD_URL", "http://env:2")
    args = parser().parse_args(["admin", "--json", "accounts", "list"])
    assert (args.token, args.url, args.json) == ("from-env", "http://env:2", True)
