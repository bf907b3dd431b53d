"""schemathesis against the running dashboard, from the spec it serves: no 5xx, and every
response (status, content type, body) is one the spec describes.

Generated path ids would only ever meet 404s, so about half of the cases are pointed at a real
account (with an activation of a real route) to reach the handlers' success paths too."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from regio_devstack.stack import Stack

# Per operation (about 30 operations): keeps the whole run well under two minutes on 2 cores.
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 10}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_account(stack: Stack) -> str:
    account_id: str = stack.admin(
        "POST", "/admin/v1/accounts", {"name": f"fuzz-{time.monotonic_ns()}"}
    )["id"]
    stack.admin("PUT", f"/admin/v1/accounts/{account_id}/activations/liv/eu")
    return account_id


def real_ids(case: Any, account_id: str, real: bool) -> None:
    parameters = case.path_parameters or {}
    if not real:
        return
    if "account_id" in parameters:
        parameters["account_id"] = account_id
    if "route" in parameters and "region" in parameters:
        parameters["route"], parameters["region"] = "liv", "eu"


def fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    account_id: str,
    statuses: set[int],
) -> None:
    """Generated requests of one operation, each validated against the spec."""

    @given(case=operation.as_strategy(mode), real=st.booleans())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION[mode],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def holds(case: Any, real: bool) -> None:
        real_ids(case, account_id, real)
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=CHECKS
        )
        statuses.add(response.status_code)

    # Unsatisfiable: nothing of this operation can be invalid (e.g. it has no parameters).
    with contextlib.suppress(Unsatisfiable):
        holds()


@pytest.mark.parametrize(
    ("role", "mode"),
    [
        ("admin", GenerationMode.POSITIVE),
        ("owner", GenerationMode.POSITIVE),
        ("admin", GenerationMode.NEGATIVE),
    ],
)
def test_the_served_spec_holds_for_generated_requests(
    stack: Stack, fuzz_account: str, role: str, mode: GenerationMode
) -> None:
    """As the admin, and as the account's owner (who meets 403s and 404s the spec lists);
    with valid requests, and with requests that break the spec (each must be a described
    4xx, never a 5xx)."""
    schema = schemathesis.openapi.from_url(stack.dashboard_url + "/openapi.json")
    session = requests.Session()
    token = stack.admin_token
    if role == "owner":
        path = f"/admin/v1/accounts/{fuzz_account}/management-tokens"
        token = stack.admin("POST", path)["token"]
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 20
    statuses: dict[str, set[int]] = {}
    started = time.monotonic()
    for operation in operations:
        seen = statuses.setdefault(operation.label, set())
        fuzz(operation, mode, stack.dashboard_url, session, headers, fuzz_account, seen)
    assert time.monotonic() - started < 120
    if mode is GenerationMode.NEGATIVE:
        return
    # The generated requests reached the handlers' success paths, not only their refusals.
    succeeded = {label for label, seen in statuses.items() if any(s < 300 for s in seen)}
    assert len(succeeded) >= len(operations) // (2 if role == "admin" else 4), statuses
