"""Turning a decoded JSON body into a pydantic model, with any problem as a 400 naming the
offending parameter the way clients write it (`messages[0].role`)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from regio_common.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)

# Names pydantic inserts into an error location for the members of a union type.
_UNION_MEMBER_NAMES = {"str", "int", "float", "bool", "list[str]", "dict[str,any]"}


def parameter_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.replace(" ", "").lower() in _UNION_MEMBER_NAMES or part.startswith("list["):
            continue
        else:
            path += f".{part}" if path else part
    return path or "body"


def parse_body(model: type[Model], payload: object) -> Model:
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        param = parameter_path(first["loc"])
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        raise InvalidRequest(message, param=param) from None
