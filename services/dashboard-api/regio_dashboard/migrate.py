"""`python -m regio_dashboard.migrate`: apply the dashboard schema's pending migrations and exit.

Run by the Kubernetes migrations Job (deploy/k8s/base/migrations-job.yaml) before a release's
pods start. The service applies pending migrations at start as well; both take the same advisory
lock (regio_common.migrations), so running side by side applies each migration once."""

from __future__ import annotations

import asyncio

from regio_common.logging import configure_logging
from regio_common.migrations import apply_migrations
from regio_dashboard.app import MIGRATIONS
from regio_dashboard.settings import DashboardSettings

SCHEMA = "dashboard"


def main() -> None:
    settings = DashboardSettings()
    log = configure_logging("dashboard-migrate", settings.log_level, settings.log_format)
    try:
        applied = asyncio.run(apply_migrations(settings.database_url, SCHEMA, MIGRATIONS))
    except Exception:
        log.exception("migrations_failed", schema=SCHEMA)
        raise SystemExit(1) from None
    log.info("migrations_done", schema=SCHEMA, applied=applied)


if __name__ == "__main__":
    main()
