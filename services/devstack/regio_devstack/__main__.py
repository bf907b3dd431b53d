"""`make run`: start the whole platform on this machine and print how to call it."""

from __future__ import annotations

import signal
import sys
import time
from typing import NoReturn

from regio_common.logging import configure_logging
from regio_devstack.credentials import NATS_PASSWORDS_FILE
from regio_devstack.settings import DevstackSettings
from regio_devstack.stack import Stack, StackConfig


def say(message: str) -> None:
    print(f"regio | {message}", flush=True)


def ops_lines(stack: Stack) -> str:
    if not stack.ops_ports:
        return "    (none: every ops port is 0)"
    return "\n".join(f"    {name + ':':<20}{stack.ops_url(name)}" for name in stack.ops_ports)


def nats_line(stack: Stack) -> str:
    if stack.nats is None:
        return "the server of REGIO_NATS_URL"
    passwords = stack.config.data_dir / NATS_PASSWORDS_FILE
    return f"{stack.nats.url}  (a user per service; passwords in {passwords})"


def banner(stack: Stack, api_key: str) -> str:
    route = next(iter(stack.catalogue.routes))
    base = f"{stack.gateway_url}/v1"
    return f"""
Regio is running.

  Base URL (region eu): {base}
  Region de:            the same URL with the header "Host: de.localhost" (region = first
                        label of the host name; nl.localhost likewise)
  API key:              {api_key}
  Dashboard API:        {stack.dashboard_url}  (admin token in {stack.config.data_dir}/admin-token)
  NATS:                 {nats_line(stack)}
  Ops listeners (GET /health, /ready, /metrics):
{ops_lines(stack)}
  Logs:                 {stack.logs_dir}

Try it:

  curl -N {base}/chat/completions \\
    -H "Authorization: Bearer {api_key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{route}", "stream": true, "max_tokens": 64,
         "messages": [{{"role": "user", "content": "Write one sentence about the sea."}}]}}'

  python: OpenAI(base_url="{base}", api_key="{api_key}")

Press Ctrl-C to stop everything.
"""


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main() -> int:
    settings = DevstackSettings()
    configure_logging("devstack", "warning", "console")
    stack = Stack(
        StackConfig(
            data_dir=settings.data_dir,
            catalogue_path=settings.catalogue_path,
            gateway_port=settings.gateway_port,
            dashboard_port=settings.dashboard_port,
            billing_port=settings.billing_port,
            gateway_metrics_port=settings.gateway_metrics_port,
            billing_metrics_port=settings.billing_metrics_port,
            dashboard_metrics_port=settings.dashboard_metrics_port,
            worker_metrics_port=settings.worker_metrics_port,
            nats_url=settings.nats_url,
            database_url=settings.database_url,
            worker_country=settings.worker_country,
            demo_credit_eur=settings.demo_credit_eur,
        ),
        say=say,
    )
    # Ctrl-C and SIGTERM interrupt whatever runs (start-up included); `finally` stops children.
    # (SIGINT too: a shell starting us in the background would have left it ignored.)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        say(f"data in {settings.data_dir}; service logs in {stack.logs_dir}")
        stack.start()
        demo = stack.seed_demo()
        print(banner(stack, demo.api_key), flush=True)
        while True:
            time.sleep(1.0)
            for process in stack.services:
                if not process.running():
                    say(f"{process.name} exited; last log lines:\n{process.log_tail()}")
                    return 1
    except KeyboardInterrupt:
        return 0
    except Exception as error:
        say(f"failed: {error}")
        return 1
    finally:
        say("stopping ...")
        stack.stop()
        say("stopped.")


if __name__ == "__main__":
    sys.exit(main())
