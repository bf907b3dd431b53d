"""The whole platform on one machine: servers, services, and a demo account.

`make run` uses it with fixed user-facing ports and a project-local data folder; the e2e tests
use it with free ports in a temporary folder."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regio_common.catalogue import Catalogue
from regio_devstack.credentials import NATS_OPS_USER, StackCredentials, write_private
from regio_devstack.processes import ManagedProcess, free_port, port_open
from regio_devstack.servers import BASE_NATS_CONF, NatsServer, PostgresServer
from regio_worker.model_files import resolve_model_path
from regio_worker.settings import EngineName

DEMO_ACCOUNT = "demo"
# The NATS user (deploy/k8s/base/nats.conf) each service module connects as.
NATS_USER_OF_MODULE = {
    "regio_gateway": "gateway",
    "regio_worker": "worker",
    "regio_billing": "billing",
    "regio_dashboard": "dashboard",
}


@dataclass
class StackConfig:
    data_dir: Path
    catalogue_path: Path
    gateway_port: int
    dashboard_port: int
    billing_port: int
    # Ops listeners (/health, /ready, /metrics); 0: not served. The first worker gets
    # worker_metrics_port, every later one a free port (none when it is 0).
    gateway_metrics_port: int = 0
    billing_metrics_port: int = 0
    dashboard_metrics_port: int = 0
    worker_metrics_port: int = 0
    # An existing server, with the operator's credentials (every service gets this URL as it
    # is); None starts one with a user per service.
    nats_url: str | None = None
    database_url: str | None = None  # an existing server; None starts one
    models_dir: Path | None = None  # default: <data_dir>/models
    worker_country: str = "de"
    demo_credit_eur: str = "10"
    log_format: str = "json"
    extra_env: dict[str, str] = field(default_factory=dict)
    # False: start() brings up servers and services but no llama.cpp worker (and assembles no
    # model); the caller starts its own workers with start_worker(route, country, **env).
    start_route_workers: bool = True
    # The engine of a route's workers (REGIO_WORKER_ENGINE), e.g. {"scripta": "scripted"}; a
    # route not named runs the worker's default, llama.cpp on the route's model.
    route_engines: dict[str, EngineName] = field(default_factory=dict)
    # Further REGIO_* settings of a route's workers, e.g. {"liv-think": {"REGIO_WORKER_N_CTX":
    # "2048"}}; start_worker's own arguments win over them.
    route_worker_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def worker_env_of(self, route: str) -> dict[str, str]:
        """The settings every worker of `route` starts with."""
        env = dict(self.route_worker_env.get(route, {}))
        if route in self.route_engines:
            env["REGIO_WORKER_ENGINE"] = self.route_engines[route]
        return env

    def runs_model(self, route: str) -> bool:
        """Whether the workers of `route` load its GGUF (a scripted or proxy worker does not)."""
        return self.route_engines.get(route, "llama_cpp") == "llama_cpp"


@dataclass(frozen=True)
class DemoAccount:
    account_id: str
    api_key: str


class Stack:
    def __init__(self, config: StackConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.catalogue = Catalogue.load(config.catalogue_path)
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.services: list[ManagedProcess] = []
        self.database_url = config.database_url or ""
        self.credentials = StackCredentials.load_or_create(config.data_dir)
        self.admin_token = self.credentials.admin_token
        # Service name -> port of its ops listener, for the services that serve one.
        self.ops_ports: dict[str, int] = {}

    # -- paths and addresses ------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.config.data_dir / "logs"

    @property
    def models_dir(self) -> Path:
        return self.config.models_dir or self.config.data_dir / "models"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.config.dashboard_port}"

    @property
    def billing_address(self) -> str:
        return f"127.0.0.1:{self.config.billing_port}"

    def ops_url(self, service: str) -> str:
        """Base URL of a service's ops listener (`gateway`, `billing`, `dashboard-api`, or a
        worker's process name)."""
        return f"http://127.0.0.1:{self.ops_ports[service]}"

    def nats_url_for(self, user: str) -> str:
        """The URL a client of NATS user `user` connects with, its password in it: a service's
        user, or `ops` (full access; for tests, benches and debugging, never for a service).
        With an existing server (StackConfig.nats_url), that URL whatever the user."""
        if self.config.nats_url:
            return self.config.nats_url
        if self.nats is None:
            raise RuntimeError("nats-server is not started")
        return self.nats.url_for(user)

    def _secrets_env(self, module: str) -> dict[str, str]:
        """The credentials of one service: its own NATS user, and only the secrets it uses."""
        user = NATS_USER_OF_MODULE.get(module)
        if user is None:
            raise ValueError(f"{module} is not a Regio service: it has no NATS user")
        credentials = self.credentials
        env = {"REGIO_NATS_URL": self.nats_url_for(user)}
        if user in credentials.billing_tokens:  # gateway and dashboard: billing's clients
            env["REGIO_BILLING_TOKEN"] = credentials.billing_tokens[user]
            env["REGIO_API_KEY_PEPPER"] = credentials.api_key_pepper
        if user == "dashboard":
            env["REGIO_ADMIN_TOKEN"] = credentials.admin_token
        if user == "billing":
            env["REGIO_BILLING_CLIENT_TOKENS"] = json.dumps(credentials.billing_tokens)
        return env

    def service_env(self, module: str, **overrides: str) -> dict[str, str]:
        """The environment of service `module` (e.g. `regio_gateway`); `overrides` win."""
        env = {
            **os.environ,
            **self._secrets_env(module),
            "REGIO_DATABASE_URL": self.database_url,
            "REGIO_CATALOGUE_PATH": str(self.config.catalogue_path),
            "REGIO_BILLING_ADDRESS": self.billing_address,
            "REGIO_BILLING_LISTEN_ADDRESS": self.billing_address,
            "REGIO_GATEWAY_PORT": str(self.config.gateway_port),
            "REGIO_GATEWAY_METRICS_PORT": str(self.config.gateway_metrics_port),
            "REGIO_BILLING_METRICS_PORT": str(self.config.billing_metrics_port),
            "REGIO_DASHBOARD_METRICS_PORT": str(self.config.dashboard_metrics_port),
            "REGIO_WORKER_METRICS_PORT": "0",  # set per worker by start_worker
            "REGIO_WORKER_METRICS_HOST": "127.0.0.1",
            "REGIO_DASHBOARD_PORT": str(self.config.dashboard_port),
            "REGIO_MODELS_DIR": str(self.models_dir),
            "REGIO_LOG_FORMAT": self.config.log_format,
            **self.config.extra_env,
        }
        env.update(overrides)
        return env

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start_servers()
            self.start_service("billing", "regio_billing")
            self._wait(self.services[-1], lambda: port_open("127.0.0.1", self.config.billing_port))
            self.start_service("dashboard-api", "regio_dashboard")
            self._wait(self.services[-1], lambda: _http_ok(self.dashboard_url + "/health"))
            self.start_service("gateway", "regio_gateway")
            self._wait(self.services[-1], self._gateway_ready)
            if not self.config.start_route_workers:
                return
            self._prepare_models()
            country = self.config.worker_country
            workers = {route: self.start_worker(route, country) for route in self.catalogue.routes}
            for route, worker in workers.items():
                self.wait_for_worker(worker, route, country)
        except BaseException:
            self.stop()
            raise

    def service(self, name: str) -> ManagedProcess:
        """The process of service `name` (e.g. `gateway`, `billing`), running or not."""
        for process in self.services:
            if process.name == name:
                return process
        raise KeyError(f"no service {name!r} in this stack")

    def crash_and_restart(self, name: str) -> ManagedProcess:
        """kill -9 service `name` (`billing`, `dashboard-api` or `gateway`), then start it again
        with the same command, environment and ports, and wait until it serves again."""
        ready = {
            "billing": lambda: port_open("127.0.0.1", self.config.billing_port),
            "dashboard-api": lambda: _http_ok(self.dashboard_url + "/health"),
            "gateway": self._gateway_ready,
        }
        if name not in ready:
            raise ValueError(f"{name!r} cannot be restarted this way (workers: start_worker)")
        process = self.service(name)
        process.kill()
        process.start()
        self._wait(process, ready[name])
        return process

    def _gateway_ready(self) -> bool:
        """Serving, and (when its ops listener is on) with every key and activation loaded."""
        if not _http_ok(self.gateway_url + "/health"):
            return False
        return "gateway" not in self.ops_ports or _http_ok(self.ops_url("gateway") + "/ready")

    def _prepare_models(self) -> None:
        """Assemble packaged GGUF files before the workers start, so the wait is explained."""
        for route in self.catalogue.routes.values():
            if route.source.gguf_package is None or not self.config.runs_model(route.name):
                continue
            self.say(
                f"preparing the model of route {route.name} ({route.source.gguf_package}); "
                f"the first start assembles it into {self.models_dir} ..."
            )
            path = resolve_model_path(route.source, self.models_dir)
            self.say(f"model ready: {path} ({path.stat().st_size // 2**20} MiB)")

    def _start_servers(self) -> None:
        data = self.config.data_dir
        if not self.config.nats_url:
            self.say("starting nats-server (JetStream, a user per service) ...")
            self.nats = NatsServer(
                data / "nats",
                config_from=BASE_NATS_CONF,
                passwords=self.credentials.nats_passwords,
                full_access_users=(NATS_OPS_USER,),
            ).start()
        if not self.database_url:
            first = not (data / "pg" / "PG_VERSION").exists()
            self.say("initialising PostgreSQL ..." if first else "starting PostgreSQL ...")
            self.postgres = PostgresServer(data / "pg").start()
            self.database_url = self.postgres.url()

    def start_service(self, name: str, module: str, **env: str) -> ManagedProcess:
        self.say(f"starting {name} ...")
        process = ManagedProcess(
            name,
            [sys.executable, "-m", module],
            self.logs_dir / f"{name}.log",
            env=self.service_env(module, **env),
        ).start()
        self.services.append(process)
        ops_port = self._ops_port_of(name, env)
        if ops_port:
            self.ops_ports[name] = ops_port
        return process

    def _ops_port_of(self, name: str, env: dict[str, str]) -> int:
        by_service = {
            "gateway": self.config.gateway_metrics_port,
            "billing": self.config.billing_metrics_port,
            "dashboard-api": self.config.dashboard_metrics_port,
        }
        if "REGIO_WORKER_METRICS_PORT" in env:
            return int(env["REGIO_WORKER_METRICS_PORT"])
        return by_service.get(name, 0)

    def _next_worker_metrics_port(self) -> int:
        if not self.config.worker_metrics_port:
            return 0
        if self.config.worker_metrics_port not in self.ops_ports.values():
            return self.config.worker_metrics_port
        return free_port()

    def start_worker(self, route: str, country: str, **env: str) -> ManagedProcess:
        """A worker of `route` in `country`, with the route's engine and settings from the
        StackConfig; `env` adds or overrides its REGIO_* settings."""
        return self.start_service(
            f"worker-{country}-{route}-{len(self.services)}",
            "regio_worker",
            **{
                "REGIO_WORKER_ROUTE": route,
                "REGIO_WORKER_COUNTRY": country,
                "REGIO_WORKER_METRICS_PORT": str(self._next_worker_metrics_port()),
                **self.config.worker_env_of(route),
                **env,
            },
        )

    def wait_for_worker(self, worker: ManagedProcess, route: str, country: str) -> None:
        """Until `worker` serves and the gateway has seen a heartbeat for (country, route).

        Both, because the gateway may still remember a worker of that country that just died."""

        def live() -> bool:
            if '"worker_ready"' not in worker.log_path.read_text(errors="replace"):
                return False
            health = _http_json(self.gateway_url + "/health", host=f"{country}.localhost")
            return country in health.get("routes", {}).get(route, {}).get("countries", [])

        self._wait(worker, live, timeout=300)

    def _wait(
        self, process: ManagedProcess, ready: Callable[[], bool], timeout: float = 60
    ) -> None:
        process.wait_until(ready, timeout, "readiness")

    def stop(self) -> None:
        for process in reversed(self.services):
            process.stop()
        self.services.clear()
        self.ops_ports.clear()
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()

    # -- demo account -------------------------------------------------------------------------
    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.admin_as(self.admin_token, method, path, body)

    def admin_as(
        self, token: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """A dashboard API call with `token` as the credential (RuntimeError unless 2xx)."""
        return _http_json(
            self.dashboard_url + path,
            method=method,
            body=body,
            headers={"Authorization": f"Bearer {token}"},
        )

    def seed_demo(self) -> DemoAccount:
        """A demo account with credit, a key and every route activated where a worker runs.

        The plaintext key is kept in the data folder, so the next start prints the same key, as
        long as the gateway still accepts it (a key hashed before the pepper existed is not:
        then a new one is issued). Without the gateway's ops listener, the gateway may not have
        loaded its keys yet, and the saved key may be replaced needlessly."""
        saved = self.config.data_dir / "demo.json"
        existing = self.admin("GET", f"/admin/v1/accounts?name={DEMO_ACCOUNT}")["data"]
        if existing and saved.exists():
            demo = DemoAccount(**json.loads(saved.read_text()))
            if demo.account_id == existing[0]["id"] and self.key_authenticates(demo.api_key):
                return demo
        account_id = (
            existing[0]["id"]
            if existing
            else self.admin("POST", "/admin/v1/accounts", {"name": DEMO_ACCOUNT})["id"]
        )
        key = self.admin("POST", f"/admin/v1/accounts/{account_id}/keys")["key"]
        self.admin(
            "POST",
            f"/admin/v1/accounts/{account_id}/credits",
            {
                "amount_eur": self.config.demo_credit_eur,
                "idempotency_key": f"demo-initial-credit-{account_id}",
                "reference": "demo account",
            },
        )
        for route in self.catalogue.routes.values():
            for region in route.regions:
                if self.config.worker_country in self.catalogue.countries(region):
                    self.admin(
                        "PUT", f"/admin/v1/accounts/{account_id}/activations/{route.name}/{region}"
                    )
        demo = DemoAccount(account_id=account_id, api_key=key)
        write_private(saved, json.dumps({"account_id": account_id, "api_key": key}))
        return demo

    def key_authenticates(self, api_key: str) -> bool:
        """Whether the gateway accepts `api_key` (GET /v1/models: 200, or 401/403)."""
        request = urllib.request.Request(
            self.gateway_url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                return False
            raise RuntimeError(f"GET /v1/models: {error.code} {error.read().decode()}") from None


def _http_json(
    url: str,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    host: str | None = None,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url}: {error.code} {error.read().decode()}") from None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
