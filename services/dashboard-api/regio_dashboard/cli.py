"""`regio admin …`: the common admin tasks over the dashboard's HTTP API, as aligned tables
(or `--json`). A client: it needs the dashboard's URL and the admin token, from `--url` /
`REGIO_DASHBOARD_URL` and `--token` / `REGIO_ADMIN_TOKEN`.

    python -m regio_dashboard.cli admin accounts list|create NAME|get ID|suspend ID
    python -m regio_dashboard.cli admin keys list ID|create ID [--activation liv/eu]|revoke ID KEY
    python -m regio_dashboard.cli admin credits add ID EUR [--reference R]|balance ID
    python -m regio_dashboard.cli admin activations list ID|activate ID ROUTE REGION|cancel …
    python -m regio_dashboard.cli admin limits show ID [--key KEY]
    python -m regio_dashboard.cli admin limits set ID [--key KEY] [--requests-per-minute N]
        [--tokens-per-minute N] [--max-concurrent-requests N] [--daily-spend-cap-eur EUR]
        [--monthly-spend-cap-eur EUR]     (only the limits given change; `none` removes one)

An error prints the API's error message and exits with status 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8081"
ACCOUNTS = "/admin/v1/accounts"


class ApiError(Exception):
    """An error answer of the API (or no answer at all)."""


class DashboardClient:
    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(
            self._url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ApiError(_error_message(error)) from None
        except (urllib.error.URLError, OSError) as error:
            raise ApiError(f"cannot reach the dashboard at {self._url}: {error}") from None

    def all_pages(self, path: str) -> list[dict[str, Any]]:
        """Every item of a cursor-paged list."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"limit": "100", **({"after": cursor} if cursor else {})}
            page = self.call("GET", f"{path}?{urllib.parse.urlencode(query)}")
            items.extend(page["data"])
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return items


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"
    where = f" ({detail['param']})" if detail.get("param") else ""
    return f"{detail.get('message', 'error')}{where} [HTTP {error.code}, {detail.get('code')}]"


# -- rendering ------------------------------------------------------------------------------------
Column = tuple[str, Callable[[dict[str, Any]], object]]


def _when(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Plain-text columns, each as wide as its widest cell."""
    cells = [[name.upper() for name, _ in columns]]
    cells += [["-" if (v := get(row)) is None else str(v) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


ACCOUNT_COLUMNS: list[Column] = [
    ("id", lambda r: r["id"]),
    ("name", lambda r: r["name"]),
    ("status", lambda r: r["status"]),
    ("created", lambda r: _when(r["created"])),
]
# Limit fields of the API, with the short names of a compact listing.
LIMIT_FIELDS = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "max_concurrent_requests": "concurrent",
    "daily_spend_cap_eur": "eur/day",
    "monthly_spend_cap_eur": "eur/month",
}


def limits_summary(limits: dict[str, Any] | None) -> str:
    """`rpm=60,eur/day=5`, or `none` (one word, so that columns split on spaces)."""
    parts = [
        f"{short}={limits[name]}"
        for name, short in LIMIT_FIELDS.items()
        if limits and limits.get(name) is not None
    ]
    return ",".join(parts) or "none"


KEY_COLUMNS: list[Column] = [
    ("id", lambda r: r["id"]),
    ("key", lambda r: f"{r['prefix']}…{r['last_four']}"),
    ("activations", lambda r: ",".join(r.get("activations") or []) or "all"),
    ("limits", lambda r: limits_summary(r.get("limits"))),
    ("status", lambda r: r["status"]),
    ("created", lambda r: _when(r["created"])),
]
LIMIT_COLUMNS: list[Column] = [
    ("scope", lambda r: r["scope"]),
    ("account", lambda r: r["account_id"]),
    ("key", lambda r: r["key_id"]),
    *[(short, lambda r, name=name: r[name] or "none") for name, short in LIMIT_FIELDS.items()],
]
ACTIVATION_COLUMNS: list[Column] = [
    ("route", lambda r: r["route"]),
    ("region", lambda r: r["region"]),
    ("effort", lambda r: r.get("thinking", {}).get("default_effort")),
    ("reasoning", lambda r: r.get("thinking", {}).get("reasoning_output")),
    ("prompt chars", lambda r: len(r.get("free_system_prompt", ""))),
    ("created", lambda r: _when(r.get("created"))),
]
CANCELLED_COLUMNS: list[Column] = [
    ("route", lambda r: r["route"]),
    ("region", lambda r: r["region"]),
    ("cancelled", lambda r: "yes" if r.get("deleted") else "no"),
]
BALANCE_COLUMNS: list[Column] = [
    ("account", lambda r: r["account_id"]),
    ("balance eur", lambda r: r["balance_eur"]),
    ("available eur", lambda r: r["available_eur"]),
    ("held nano", lambda r: r["held_nano"]),
]


# -- commands -------------------------------------------------------------------------------------
Result = tuple[Any, Sequence[Column]]


def run_command(client: DashboardClient, args: argparse.Namespace) -> Result:
    resource, action = args.resource, args.action
    if resource == "accounts":
        if action == "list":
            return client.all_pages(ACCOUNTS), ACCOUNT_COLUMNS
        if action == "create":
            body = {"name": args.name}
            return client.call("POST", ACCOUNTS, body, _new_key()), ACCOUNT_COLUMNS
        path = f"{ACCOUNTS}/{args.account_id}"
        if action == "get":
            return client.call("GET", path), ACCOUNT_COLUMNS
        return client.call("POST", path + "/suspend"), ACCOUNT_COLUMNS
    base = f"{ACCOUNTS}/{args.account_id}"
    if resource == "keys":
        if action == "list":
            return client.all_pages(base + "/keys"), KEY_COLUMNS
        if action == "create":
            body = {"activations": args.activation or []}
            created = client.call("POST", base + "/keys", body, _new_key())
            columns = [*KEY_COLUMNS, ("secret (shown once)", lambda r: r["key"])]
            return created, columns
        return client.call("DELETE", f"{base}/keys/{args.key_id}"), KEY_COLUMNS
    if resource == "limits":
        path = base + (f"/keys/{args.key}" if args.key else "") + "/limits"
        current = client.call("GET", path)
        if action == "show":
            return current, LIMIT_COLUMNS
        return client.call("PUT", path, changed_limits(current, args)), LIMIT_COLUMNS
    if resource == "credits":
        if action == "add":
            body = {"amount_eur": args.amount_eur, "reference": args.reference}
            return client.call("POST", base + "/credits", body, _new_key()), BALANCE_COLUMNS
        return client.call("GET", base + "/balance"), BALANCE_COLUMNS
    # activations
    if action == "list":
        return client.all_pages(base + "/activations"), ACTIVATION_COLUMNS
    path = f"{base}/activations/{args.route}/{args.region}"
    if action == "activate":
        return client.call("PUT", path, {}), ACTIVATION_COLUMNS
    return client.call("DELETE", path), CANCELLED_COLUMNS


def changed_limits(current: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The full PUT body: the current limits with the options given (`none`: no limit)."""
    body = {name: current.get(name) for name in LIMIT_FIELDS}
    for name in LIMIT_FIELDS:
        given = getattr(args, name, None)
        if given is None:
            continue
        if given.lower() == "none":
            body[name] = None
        elif name.endswith("_eur"):
            body[name] = given
        else:
            body[name] = int(given) if given.isdigit() else given  # the API refuses a non-integer
    return body


def _new_key() -> str:
    """One creating call, one idempotency key: a retry of this process never creates twice."""
    return f"cli-{uuid.uuid4().hex}"


def connection_options() -> argparse.ArgumentParser:
    """Options accepted before and after `admin` (`regio admin --token …`). A new parser each
    time: argparse shares a parent's actions, and the top level's defaults must stay its own."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=argparse.SUPPRESS, help="dashboard API base URL")
    options.add_argument("--token", default=argparse.SUPPRESS, help="admin token")
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return options


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="regio", description="Regio command line.", parents=[connection_options()]
    )
    top.set_defaults(
        url=os.environ.get("REGIO_DASHBOARD_URL", DEFAULT_URL),
        token=os.environ.get("REGIO_ADMIN_TOKEN"),
        json=False,
    )
    areas = top.add_subparsers(dest="area", required=True)
    admin = areas.add_parser(
        "admin", help="admin tasks over the dashboard API", parents=[connection_options()]
    )
    resources = admin.add_subparsers(dest="resource", required=True)

    accounts = resources.add_parser("accounts").add_subparsers(dest="action", required=True)
    accounts.add_parser("list")
    accounts.add_parser("create").add_argument("name")
    accounts.add_parser("get").add_argument("account_id")
    accounts.add_parser("suspend").add_argument("account_id")

    keys = resources.add_parser("keys").add_subparsers(dest="action", required=True)
    keys.add_parser("list").add_argument("account_id")
    create_key = keys.add_parser("create")
    create_key.add_argument("account_id")
    create_key.add_argument(
        "--activation", action="append", help="route/region the key may use (repeatable)"
    )
    revoke = keys.add_parser("revoke")
    revoke.add_argument("account_id")
    revoke.add_argument("key_id")

    credits = resources.add_parser("credits").add_subparsers(dest="action", required=True)
    add = credits.add_parser("add")
    add.add_argument("account_id")
    add.add_argument("amount_eur")
    add.add_argument("--reference", default="")
    credits.add_parser("balance").add_argument("account_id")

    activations = resources.add_parser("activations").add_subparsers(dest="action", required=True)
    activations.add_parser("list").add_argument("account_id")
    for name in ("activate", "cancel"):
        command = activations.add_parser(name)
        command.add_argument("account_id")
        command.add_argument("route")
        command.add_argument("region")

    limits = resources.add_parser(
        "limits", help="usage limits of an account, or of one of its keys (--key)"
    ).add_subparsers(dest="action", required=True)
    for name in ("show", "set"):
        command = limits.add_parser(name)
        command.add_argument("account_id")
        command.add_argument("--key", help="a key id: the key's limits, not the account's")
    for name in LIMIT_FIELDS:
        command.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="EUR" if name.endswith("_eur") else "N",
            help="new value, or `none` for no limit (unchanged when not given)",
        )
    return top


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    if not args.token:
        print("error: the admin token is needed (--token or REGIO_ADMIN_TOKEN)", file=sys.stderr)
        return 1
    client = DashboardClient(args.url, args.token)
    try:
        result, columns = run_command(client, args)
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        rows = result if isinstance(result, list) else [result]
        out.write(table(rows, columns) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
