"""Which gRPC status each kind of error becomes."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from regio_billing.errors import HoldNotFound, IdempotencyConflict
from regio_billing.interceptors import INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE, status_for
from regio_common.errors import InvalidRequest


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (InvalidRequest("amount_nano must be positive"), grpc.StatusCode.INVALID_ARGUMENT, None),
        (HoldNotFound("no hold for transaction t"), grpc.StatusCode.NOT_FOUND, None),
        (IdempotencyConflict("key reused"), grpc.StatusCode.ALREADY_EXISTS, None),
        (
            psycopg.OperationalError("server closed"),
            grpc.StatusCode.UNAVAILABLE,
            UNAVAILABLE_MESSAGE,
        ),
        (PoolTimeout("no connection"), grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE),
        (psycopg.errors.UniqueViolation("dup key"), grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
        (KeyError("secret"), grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    ],
)
def test_status_for(error: Exception, code: grpc.StatusCode, message: str | None) -> None:
    expected_message = message if message is not None else str(error)

    assert status_for(error) == (code, expected_message)
