"""Manual credit adjustments by the admin, and the audit log that records each of them."""

from __future__ import annotations

import hashlib

from aiohttp import web

from regio_common.errors import Conflict, InvalidRequest
from regio_common.money import eur_to_nano, nano_to_eur
from regio_dashboard.audit_store import AuditEntry
from regio_dashboard.handlers.common import account_in_scope, admin, json_body, respond
from regio_dashboard.operations import CLIENT_ERRORS, PAGING, QueryParameter, operation
from regio_dashboard.pagination import Page, page_request, time_position
from regio_dashboard.schemas import (
    AdjustmentOut,
    AuditEntryOut,
    AuditList,
    BalanceOut,
    CreateAdjustment,
)

ACTION = "credit_adjustment"


def audit_entry_json(entry: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=entry.entry_id,
        actor=entry.actor,
        action=entry.action,
        account_id=entry.account_id,
        amount_nano=entry.amount_nano,
        amount_eur=str(nano_to_eur(entry.amount_nano)),
        reason=entry.reason,
        outcome=entry.outcome,  # type: ignore[arg-type]
        created=int(entry.created_at.timestamp()),
    )


def billing_key(account_id: str, idempotency_key: str | None, entry_id: str) -> str:
    """A retry under the same Idempotency-Key must not adjust twice even when the first
    attempt's answer was lost, so billing's key derives from it when there is one."""
    if idempotency_key is None:
        return entry_id
    return "adj-" + hashlib.sha256(f"{account_id}\n{idempotency_key}".encode()).hexdigest()


@operation(
    summary="Adjust an account's credit by hand (audited: who, when, why)",
    tag="credits",
    response=AdjustmentOut,
    status=201,
    body=CreateAdjustment,
    admin_only=True,
    idempotent=True,
    errors=(*CLIENT_ERRORS, 503),
    description=(
        "Role: admin. A negative amount never overdraws: when it exceeds the credit available "
        "the answer is a 409 `insufficient_credit` and the audit entry says `refused`."
    ),
)
async def adjust_credits(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    body: CreateAdjustment = CreateAdjustment.parse(await json_body(request))
    amount_nano = eur_to_nano(body.amount_eur)
    if amount_nano == 0:
        raise InvalidRequest("Invalid value for 'amount_eur': must not be 0.", param="amount_eur")
    entry = await state.audit.record(
        state.admin_label, ACTION, account.account_id, amount_nano, body.reason
    )
    key = billing_key(account.account_id, request.headers.get("Idempotency-Key"), entry.entry_id)
    # A billing failure leaves the entry `pending`: whether billing applied it is unknown.
    result = await state.adjustments.adjust(account.account_id, amount_nano, key, body.reason)
    if not result.applied:
        await state.audit.set_outcome(entry.entry_id, "refused")
        raise Conflict(
            f"The adjustment of {body.amount_eur} EUR would overdraw the account: only "
            f"{nano_to_eur(result.balance.available_nano)} EUR is available.",
            param="amount_eur",
            code="insufficient_credit",
        )
    entry = await state.audit.set_outcome(entry.entry_id, "applied")
    adjusted = AdjustmentOut(
        audit_entry=audit_entry_json(entry),
        balance=BalanceOut.of(result.balance, account.account_id),
    )
    return respond(adjusted, status=201)


@operation(
    summary="The audit log of manual adjustments (oldest first)",
    tag="audit",
    response=AuditList,
    admin_only=True,
    query=(
        *PAGING,
        QueryParameter(
            "account_id",
            "Only the entries of this account.",
            {"type": "string", "maxLength": 100},
        ),
    ),
)
async def list_audit(request: web.Request) -> web.Response:
    state = await admin(request)
    page = page_request("audit", request.query)
    rows = await state.audit.list_entries(
        page.fetch, time_position(page), request.query.get("account_id")
    )
    listed = Page.of(rows, page, lambda e: (e.created_at.isoformat(), e.entry_id))
    return respond(
        AuditList(
            data=[audit_entry_json(e) for e in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )
