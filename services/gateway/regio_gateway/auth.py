"""Bearer-key authentication against the in-memory key directory."""

from __future__ import annotations

from aiohttp import web

from regio_common.config_records import ApiKeyRecord
from regio_common.errors import AuthenticationFailed, InvalidRequest, RegioError
from regio_gateway.config_store import ConfigStore

# The authenticated key, for checks that need more than its account (its activation scope).
API_KEY_RECORD = web.RequestKey("api_key_record", ApiKeyRecord)
# The missing-key answer is a 400 invalid_value naming this param (the seed's table).
AUTHORIZATION_PARAM = "Authorization"


def is_authentication_failure(error: RegioError) -> bool:
    """A missing, malformed, unknown or revoked key (not a valid key that is refused later)."""
    return isinstance(error, AuthenticationFailed) or (
        isinstance(error, InvalidRequest) and error.param == AUTHORIZATION_PARAM
    )


def authenticate(request: web.Request, store: ConfigStore) -> ApiKeyRecord:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        # The seed's table answers a missing key with 400 invalid_value.
        raise InvalidRequest(
            "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.",
            param=AUTHORIZATION_PARAM,
        )
    # Keys are printable ASCII; anything else cannot be one (and cannot be hashed as text).
    record = store.account_for_key(key) if key.isascii() and key.isprintable() else None
    if record is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    request[API_KEY_RECORD] = record
    return record
