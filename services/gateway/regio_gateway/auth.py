"""Bearer-key authentication against the in-memory key directory."""

from __future__ import annotations

from aiohttp import web

from regio_common.config_records import ApiKeyRecord
from regio_common.errors import AuthenticationFailed, InvalidRequest
from regio_gateway.config_store import ConfigStore

# The authenticated key, for checks that need more than its account (its activation scope).
API_KEY_RECORD = web.RequestKey("api_key_record", ApiKeyRecord)


def authenticate(request: web.Request, store: ConfigStore) -> ApiKeyRecord:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        # The seed's table answers a missing key with 400 invalid_value.
        raise InvalidRequest(
            "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.",
            param="Authorization",
        )
    record = store.account_for_key(key)
    if record is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    request[API_KEY_RECORD] = record
    return record
