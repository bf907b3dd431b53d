"""What each handler promises: its request and response models, query parameters, roles and
error responses. A handler module describes its handlers with `@operation(...)`; the OpenAPI
document (openapi.py) is built from the app's route table plus these descriptions, so any route
registered with aiohttp is in the document, described exactly when its handler says more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from regio_dashboard.pagination import MAX_LIMIT

Handler = TypeVar("Handler", bound=Callable[..., Any])
OPERATION_ATTRIBUTE = "__regio_operation__"
# Every authenticated call may meet these: malformed input (400), no valid credential (401),
# a role that may not do it (403), an object outside the caller's reach (404), a state conflict
# (409) or a value breaking a rule of the resource (422).
CLIENT_ERRORS = (400, 401, 403, 404, 409, 422)


@dataclass(frozen=True)
class QueryParameter:
    name: str
    description: str
    schema: dict[str, Any]


PAGING = (
    QueryParameter(
        "limit",
        f"Items per page, 1 to {MAX_LIMIT} (default 20).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
    QueryParameter(
        "after",
        "The `next_cursor` of the previous page.",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,400}$"},
    ),
)


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    response: type[BaseModel] | None
    status: int = 200
    body: type[BaseModel] | None = None
    query: tuple[QueryParameter, ...] = ()
    admin_only: bool = False
    authenticated: bool = True
    errors: tuple[int, ...] = CLIENT_ERRORS
    # Accepts an `Idempotency-Key` header: a retry with the same key and body gets the first
    # response again instead of creating a second object.
    idempotent: bool = False
    # A response field holding a secret shown once: never stored for an idempotent replay.
    secret_field: str | None = None
    description: str = field(default="")


def operation(**description: Any) -> Callable[[Handler], Handler]:
    """Attach an `Operation` to a handler (keyword arguments as in `Operation`)."""
    described = Operation(**description)

    def attach(handler: Handler) -> Handler:
        setattr(handler, OPERATION_ATTRIBUTE, described)
        return handler

    return attach


def operation_of(handler: object) -> Operation | None:
    found = getattr(handler, OPERATION_ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None
