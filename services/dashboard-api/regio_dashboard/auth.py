"""Who is calling the dashboard, and what their role lets them reach.

Two roles: the admin (the `REGIO_ADMIN_TOKEN`) manages every account; an account owner
(a `rgm-` management token issued by the admin) manages only their own account. A missing,
malformed, unknown or revoked credential is a 401; a valid credential whose role may not do
something is a 403; another account's objects are answered as if they did not exist (404)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from regio_common.errors import NotFound, PermissionDenied, Unauthenticated
from regio_dashboard.credentials import MANAGEMENT_TOKEN_PREFIX

AccountOfToken = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True)
class Principal:
    role: Literal["admin", "owner"]
    account_id: str | None = None  # the owner's account; None for the admin

    def require_admin(self) -> None:
        if self.role != "admin":
            raise PermissionDenied("This operation needs the admin role.")

    def require_account(self, account_id: str) -> None:
        """Object-level authorization: an owner sees no other account, not even its existence."""
        if self.role == "owner" and account_id != self.account_id:
            raise NotFound("No such account.", param="account_id")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when missing/malformed."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    if not (token.isascii() and token.isprintable()):
        return None  # tokens are printable ASCII; other bytes cannot even be compared as text
    return token


async def authenticate(
    authorization: str | None, admin_token: str, account_of_token: AccountOfToken
) -> Principal:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated(
            "Missing or malformed credentials: send 'Authorization: Bearer <token>' with the "
            "admin token or a management token."
        )
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal("admin")
    if token.startswith(MANAGEMENT_TOKEN_PREFIX):
        account_id = await account_of_token(token)
        if account_id is not None:
            return Principal("owner", account_id)
    raise Unauthenticated("Unknown or revoked credentials (API keys are not accepted here).")
