"""Credits beyond the balance: an account's transactions, usage per activation and day,
payments (with their bonus) and refunds, and the admin's promotions. Billing keeps the books;
these handlers authorize, page and shape. Payments themselves are made by `POST …/credits`."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from aiohttp import web
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from regio.billing.v1 import billing_pb2
from regio_common.errors import InvalidRequest
from regio_common.money import eur_to_nano
from regio_dashboard.billing_client import TimeWindow
from regio_dashboard.handlers.common import account_in_scope, admin, json_body, respond
from regio_dashboard.operations import CLIENT_ERRORS, PAGING, QueryParameter, operation
from regio_dashboard.pagination import Page, PageRequest, page_request, time_position
from regio_dashboard.schemas import BalanceOut
from regio_dashboard.schemas_credits import (
    CreatePromotion,
    PaymentList,
    PaymentOut,
    PromotionList,
    PromotionOut,
    RefundOut,
    TransactionList,
    TransactionOut,
    UsageList,
    UsageOut,
    eur,
    moment,
)

BILLING_ERRORS = (*CLIENT_ERRORS, 503)
NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"}
TIME_SCHEMA = {"type": "string", "format": "date-time"}
WINDOW = (
    QueryParameter(
        "since",
        "From this time, inclusive (RFC 3339; a bare YYYY-MM-DD is that day's start, UTC).",
        TIME_SCHEMA,
    ),
    QueryParameter("until", "Up to this time, exclusive (as `since`).", TIME_SCHEMA),
)
_AWARE = TypeAdapter(AwareDatetime)


def parse_time(query: object, name: str) -> datetime | None:
    text = query.get(name)  # type: ignore[attr-defined]
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        parsed: datetime = _AWARE.validate_python(text)
        return parsed.astimezone(UTC)
    except (ValueError, ValidationError, OverflowError):
        raise InvalidRequest(
            f"Invalid value for '{name}': expected an RFC 3339 date-time or YYYY-MM-DD.",
            param=name,
        ) from None


def time_window(request: web.Request) -> TimeWindow:
    window = TimeWindow(parse_time(request.query, "since"), parse_time(request.query, "until"))
    if window.since is not None and window.until is not None and window.since >= window.until:
        raise InvalidRequest("Invalid value for 'until': it must be after 'since'.", param="until")
    return window


def entry_position(page: PageRequest) -> tuple[datetime, int] | None:
    """(created_at, id) of the last item seen, for lists of billing entries."""
    position = time_position(page)
    if position is None:
        return None
    created, item_id = position
    if not item_id.isdigit() or created.tzinfo is None:
        raise InvalidRequest("Invalid value for 'after': not a cursor of this list.", param="after")
    return created, int(item_id)


@operation(
    summary="An account's transactions (newest first)",
    tag="credits",
    response=TransactionList,
    query=(*PAGING, *WINDOW),
    errors=BILLING_ERRORS,
    description="Payments, charges (one per request, with its tokens and activation), "
    "promotional bonuses, refunds, claw-backs and adjustments. Role: admin or the account's "
    "owner.",
)
async def list_transactions(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("transactions", request.query)
    entries = await state.credits.transactions(
        account.account_id, time_window(request), page.fetch, entry_position(page)
    )
    listed = Page.of(
        entries, page, lambda entry: (moment(entry.created_at).isoformat(), str(entry.id))
    )
    return respond(
        TransactionList(
            data=[TransactionOut.of(account.account_id, entry) for entry in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="An account's usage per activation and UTC day (newest day first)",
    tag="credits",
    response=UsageList,
    query=(
        *PAGING,
        *WINDOW,
        QueryParameter("route", "Only this route's activations.", NAME_SCHEMA),
        QueryParameter("region", "Only this region's activations.", NAME_SCHEMA),
    ),
    errors=BILLING_ERRORS,
)
async def list_usage(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("usage", request.query, arity=3)
    after = None
    if page.after is not None:
        day, route, region = page.after
        try:
            date.fromisoformat(day)
        except ValueError:
            raise InvalidRequest(
                "Invalid value for 'after': not a cursor of this list.", param="after"
            ) from None
        after = (day, route, region)
    days = await state.credits.usage(
        account.account_id,
        time_window(request),
        page.fetch,
        route=request.query.get("route", ""),
        region=request.query.get("region", ""),
        after=after,
    )
    listed = Page.of(days, page, lambda row: (row.day, row.route, row.region))
    return respond(
        UsageList(
            data=[UsageOut.of(account.account_id, row) for row in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="An account's payments with their bonus (newest first)",
    tag="credits",
    response=PaymentList,
    query=(*PAGING, *WINDOW),
    errors=BILLING_ERRORS,
    description="Payments are made with `POST …/credits`. Each shows the promotional bonus it "
    "earned and any refund. Role: admin or the account's owner.",
)
async def list_payments(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request)
    page = page_request("payments", request.query)
    payments = await state.credits.payments(
        account.account_id, time_window(request), page.fetch, entry_position(page)
    )
    listed = Page.of(
        payments, page, lambda payment: (moment(payment.created_at).isoformat(), str(payment.id))
    )
    return respond(
        PaymentList(
            data=[PaymentOut.of(payment) for payment in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )


@operation(
    summary="Refund a payment",
    tag="credits",
    response=RefundOut,
    admin_only=True,
    idempotent=True,
    errors=BILLING_ERRORS,
    description="Returns the unused paid part and claws back the unused bonus, never more than "
    "is available (open holds stay covered). A payment is refunded once; a repeat answers the "
    "first refund (`already_refunded`). Role: admin.",
)
async def refund_payment(request: web.Request) -> web.Response:
    state, account = await account_in_scope(request, admin_only=True)
    payment_id = request.match_info["payment_id"]
    if not payment_id.isdigit() or len(payment_id) > 18:
        raise InvalidRequest("Invalid value for 'payment_id'.", param="payment_id")
    payment = await state.credits.payment(account.account_id, int(payment_id))
    refund = await state.credits.refund_payment(payment.idempotency_key)
    return respond(
        RefundOut(
            payment_id=payment_id,
            account_id=account.account_id,
            refunded_nano=refund.refunded_nano,
            refunded_eur=eur(refund.refunded_nano),
            clawed_back_nano=refund.clawed_back_nano,
            clawed_back_eur=eur(refund.clawed_back_nano),
            already_refunded=refund.already_refunded,
            balance=BalanceOut.of(refund.balance, account.account_id),
        )
    )


@operation(
    summary="Create a promotion",
    tag="promotions",
    response=PromotionOut,
    status=201,
    body=CreatePromotion,
    admin_only=True,
    idempotent=True,
    errors=BILLING_ERRORS,
    description="A payment of at least `min_payment_eur` made in [starts_at, ends_at) earns one "
    "bonus of floor(amount * bonus_percent / 100) as promotional credit (the best qualifying "
    "promotion applies). Role: admin.",
)
async def create_promotion(request: web.Request) -> web.Response:
    state = await admin(request)
    body = CreatePromotion.parse(await json_body(request))
    if body.ends_at <= body.starts_at:
        raise InvalidRequest(
            "Invalid value for 'ends_at': it must be after 'starts_at'.", param="ends_at"
        )
    request_message = billing_pb2.CreatePromotionRequest(
        name=body.name,
        min_payment_nano=eur_to_nano(body.min_payment_eur),
        bonus_percent=body.bonus_percent,
    )
    try:
        request_message.starts_at.FromDatetime(body.starts_at.astimezone(UTC))
        request_message.ends_at.FromDatetime(body.ends_at.astimezone(UTC))
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "Invalid value for 'starts_at' or 'ends_at'.", param="starts_at"
        ) from None
    promotion = await state.credits.create_promotion(request_message)
    return respond(PromotionOut.of(promotion), status=201)


@operation(
    summary="List promotions",
    tag="promotions",
    response=PromotionList,
    admin_only=True,
    query=PAGING,
    errors=BILLING_ERRORS,
)
async def list_promotions(request: web.Request) -> web.Response:
    state = await admin(request)
    page = page_request("promotions", request.query)
    promotions = await state.credits.promotions()  # few: paged here, by (starts_at, id)
    position = None if page.after is None else entry_position(page)
    ordered = sorted(promotions, key=lambda p: (moment(p.starts_at), p.id))
    if position is not None:
        ordered = [p for p in ordered if (moment(p.starts_at), p.id) > position]
    listed = Page.of(
        ordered[: page.fetch], page, lambda p: (moment(p.starts_at).isoformat(), str(p.id))
    )
    return respond(
        PromotionList(
            data=[PromotionOut.of(promotion) for promotion in listed.data],
            has_more=listed.has_more,
            next_cursor=listed.next_cursor,
        )
    )
