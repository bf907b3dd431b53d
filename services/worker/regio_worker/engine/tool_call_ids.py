"""Ids of the tool calls an engine makes, in OpenAI's shape: `call_` and 24 letters or digits."""

from __future__ import annotations

import secrets
import string

TOOL_CALL_ID_PREFIX = "call_"
TOOL_CALL_ID_LENGTH = 24  # characters after the prefix
_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    """A fresh id; random so that ids of different answers in one conversation never clash."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(TOOL_CALL_ID_LENGTH))
    return TOOL_CALL_ID_PREFIX + suffix
