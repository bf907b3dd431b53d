"""Idempotency-Key replay rules (the PostgreSQL side is exercised end to end)."""

from __future__ import annotations

import json

import pytest

from regio_common.errors import Conflict, InvalidRequest, UnprocessableEntity
from regio_dashboard.idempotency import _replay, _withhold_secret, request_hash
from regio_dashboard.idempotency_store import StoredResponse


def test_equal_json_bodies_hash_alike_whatever_their_key_order() -> None:
    assert request_hash(b'{"a": 1, "b": [1, 2]}') == request_hash(b'{"b":[1,2],"a":1}')
    assert request_hash(b'{"a": 1}') != request_hash(b'{"a": 2}')
    assert request_hash(b"") == request_hash(b"")  # no body at all


def test_a_completed_request_is_replayed_with_its_status_and_body() -> None:
    body = json.dumps({"id": "acct_1", "object": "account"})
    stored = StoredResponse(request_hash(b"{}"), 201, body, False)
    response = _replay(stored, request_hash(b"{}"))
    assert response.status == 201 and response.text == body
    assert response.headers["Idempotent-Replayed"] == "true"


def test_another_body_under_the_same_key_is_a_422() -> None:
    stored = StoredResponse(request_hash(b'{"name": "a"}'), 201, "{}", False)
    with pytest.raises(UnprocessableEntity) as caught:
        _replay(stored, request_hash(b'{"name": "b"}'))
    assert caught.value.code == "idempotency_key_reused"


def test_a_request_still_running_is_a_409() -> None:
    stored = StoredResponse(request_hash(b"{}"), None, None, False)
    with pytest.raises(Conflict) as caught:
        _replay(stored, request_hash(b"{}"))
    assert caught.value.code == "idempotency_request_in_progress"


def test_a_created_secret_is_never_stored_nor_replayed() -> None:
    created = json.dumps({"id": "key_1", "object": "api_key", "key": "rg-secret"})
    withheld = _withhold_secret(created, "key")
    assert "rg-secret" not in withheld and json.loads(withheld)["id"] == "key_1"
    stored = StoredResponse(request_hash(b"{}"), 201, withheld, True)
    with pytest.raises(Conflict) as caught:
        _replay(stored, request_hash(b"{}"))
    assert caught.value.code == "idempotency_key_reused"
    assert "key_1" in caught.value.message and "shown only once" in caught.value.message


def test_a_malformed_key_is_a_400() -> None:
    from aiohttp.test_utils import make_mocked_request

    from regio_dashboard.idempotency import idempotency_key

    assert idempotency_key(make_mocked_request("POST", "/", headers={})) is None
    ok = make_mocked_request("POST", "/", headers={"Idempotency-Key": "k-1"})
    assert idempotency_key(ok) == "k-1"
    for bad in ("x" * 201, "tab\there", "é"):
        with pytest.raises(InvalidRequest):
            idempotency_key(make_mocked_request("POST", "/", headers={"Idempotency-Key": bad}))
