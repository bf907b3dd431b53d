"""The one error middleware: envelopes, transaction ids, and no stack trace to clients."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from regio_common.errors import ModelNotFound, ServiceUnavailable
from regio_common.http_middleware import transaction_middleware


async def _client() -> TestClient:  # type: ignore[type-arg]
    async def not_found(request: web.Request) -> web.Response:
        raise ModelNotFound("The model 'x' does not exist.", param="model")

    async def unavailable(request: web.Request) -> web.Response:
        raise ServiceUnavailable("Billing is down.")

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[transaction_middleware])
    app.router.add_get("/not-found", not_found)
    app.router.add_get("/unavailable", unavailable)
    app.router.add_get("/crash", crash)
    app.router.add_get("/fine", fine)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_errors_become_openai_envelopes_with_transaction_ids() -> None:
    client = await _client()
    try:
        response = await client.get("/not-found")
        assert response.status == 404
        assert await response.json() == {
            "error": {
                "message": "The model 'x' does not exist.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        assert response.headers["x-transaction-id"].startswith("txn-")

        response = await client.get("/unavailable")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "service_unavailable"

        response = await client.get("/crash")
        assert response.status == 500
        body = await response.text()
        assert "secret internal detail" not in body and "Traceback" not in body
        assert (await response.json())["error"]["type"] == "server_error"

        response = await client.get("/nowhere")
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"

        response = await client.post("/fine")
        assert response.status == 405

        response = await client.get("/fine")
        assert response.status == 200
        first = response.headers["x-transaction-id"]
        second = (await client.get("/fine")).headers["x-transaction-id"]
        assert first != second
    finally:
        await client.close()
