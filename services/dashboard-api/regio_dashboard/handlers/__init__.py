"""REST handlers of the dashboard API, one module per resource; `add_routes` wires them."""

from __future__ import annotations

from aiohttp import web

from regio_dashboard.handlers import (
    accounts,
    activations,
    api_keys,
    audit,
    catalogue,
    credits,
    limits,
    management_tokens,
)
from regio_dashboard.handlers.common import health
from regio_dashboard.handlers.docs import openapi_document

ACCOUNTS = "/admin/v1/accounts"
ACCOUNT = ACCOUNTS + "/{account_id}"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/health", health)
    router.add_get("/openapi.json", openapi_document)
    router.add_get("/admin/v1/audit", audit.list_audit)
    router.add_post(ACCOUNTS, accounts.create_account)
    router.add_get(ACCOUNTS, accounts.list_accounts)
    router.add_get(ACCOUNT, accounts.get_account)
    router.add_post(ACCOUNT + "/suspend", accounts.suspend_account)
    router.add_post(ACCOUNT + "/unsuspend", accounts.unsuspend_account)
    router.add_post(ACCOUNT + "/credits", accounts.add_credits)
    router.add_get(ACCOUNT + "/balance", accounts.get_balance)
    router.add_post(ACCOUNT + "/adjustments", audit.adjust_credits)
    router.add_post(ACCOUNT + "/management-tokens", management_tokens.create_token)
    router.add_get(ACCOUNT + "/management-tokens", management_tokens.list_tokens)
    router.add_delete(ACCOUNT + "/management-tokens/{token_id}", management_tokens.revoke_token)
    router.add_post(ACCOUNT + "/keys", api_keys.create_key)
    router.add_get(ACCOUNT + "/keys", api_keys.list_keys)
    router.add_delete(ACCOUNT + "/keys/{key_id}", api_keys.revoke_key)
    router.add_get(ACCOUNT + "/limits", limits.get_account_limits)
    router.add_put(ACCOUNT + "/limits", limits.put_account_limits)
    router.add_get(ACCOUNT + "/keys/{key_id}/limits", limits.get_key_limits)
    router.add_put(ACCOUNT + "/keys/{key_id}/limits", limits.put_key_limits)
    router.add_get(ACCOUNT + "/activations", activations.list_activations)
    router.add_put(ACCOUNT + "/activations/{route}/{region}", activations.put_activation)
    router.add_delete(ACCOUNT + "/activations/{route}/{region}", activations.cancel_activation)
    # Credits statements, promotions and the catalogue with prices (billing's books).
    router.add_get(ACCOUNT + "/transactions", credits.list_transactions)
    router.add_get(ACCOUNT + "/usage", credits.list_usage)
    router.add_get(ACCOUNT + "/payments", credits.list_payments)
    router.add_post(ACCOUNT + "/payments/{payment_id}/refund", credits.refund_payment)
    router.add_post("/admin/v1/promotions", credits.create_promotion)
    router.add_get("/admin/v1/promotions", credits.list_promotions)
    router.add_get("/admin/v1/catalogue", catalogue.list_catalogue)
    router.add_put("/admin/v1/catalogue/{route}/price", catalogue.set_route_price)
