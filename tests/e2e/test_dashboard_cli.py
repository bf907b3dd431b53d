"""`regio admin …` against the running stack: readable tables, `--json`, errors exit 1."""

from __future__ import annotations

import io
import json
import time

import pytest

from regio_dashboard.cli import main
from regio_devstack.stack import Stack


def regio(stack: Stack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--url", stack.dashboard_url, "--token", stack.admin_token, *argv], out=out)
    return code, out.getvalue()


def test_the_common_admin_tasks_print_aligned_tables(stack: Stack) -> None:
    name = f"cli-{time.monotonic_ns()}"
    code, out = regio(stack, "admin", "accounts", "create", name)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "CREATED"]
    account_id = row.split()[0]
    assert row.split()[1:3] == [name, "active"]
    # Columns line up: each value starts where its header does.
    assert row.index(name) == header.index("NAME")

    code, out = regio(stack, "--json", "admin", "accounts", "get", account_id)
    assert code == 0 and json.loads(out)["name"] == name

    assert regio(stack, "admin", "activations", "activate", account_id, "liv", "de")[0] == 0
    code, out = regio(stack, "admin", "activations", "list", account_id)
    assert out.splitlines()[1].split()[:4] == ["liv", "de", "medium", "reasoning_content"]

    code, out = regio(stack, "admin", "keys", "create", account_id, "--activation", "liv/de")
    assert code == 0 and "SECRET (SHOWN ONCE)" in out
    key_id, secret = out.splitlines()[1].split()[0], out.splitlines()[1].split()[-1]
    assert secret.startswith("rg-") and len(secret) > 40
    code, out = regio(stack, "admin", "keys", "list", account_id)
    assert [line.split()[0] for line in out.splitlines()[1:]] == [key_id]
    # Listed by prefix and last four only.
    assert "liv/de" in out and secret not in out and f"{secret[:7]}…{secret[-4:]}" in out
    code, out = regio(stack, "admin", "keys", "revoke", account_id, key_id)
    assert code == 0 and "revoked" in out

    assert regio(stack, "admin", "credits", "add", account_id, "2.5")[0] == 0
    code, out = regio(stack, "admin", "credits", "balance", account_id)
    assert out.splitlines()[1].split()[:3] == [account_id, "2.5", "2.5"]

    code, out = regio(stack, "admin", "accounts", "list")
    assert code == 0 and any(line.split()[0] == account_id for line in out.splitlines())
    code, out = regio(stack, "admin", "accounts", "suspend", account_id)
    assert code == 0 and "suspended" in out
    code, out = regio(stack, "admin", "activations", "cancel", account_id, "liv", "de")
    assert code == 0 and "yes" in out


def test_errors_print_the_api_message_and_exit_1(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = regio(stack, "admin", "accounts", "get", "acct_nope")
    assert code == 1 and out == ""
    assert "No such account." in capsys.readouterr().err
    out_buffer = io.StringIO()
    bad = main(
        ["--url", stack.dashboard_url, "--token", "wrong", "admin", "accounts", "list"],
        out=out_buffer,
    )
    assert bad == 1 and "invalid_credentials" in capsys.readouterr().err
