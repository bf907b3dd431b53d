"""`python -m regio_billing.migrate`: apply the billing schema's pending migrations and exit.

Run by the Kubernetes migrations Job (deploy/k8s/base/migrations-job.yaml) before a release's
pods start. The service applies pending migrations at start as well; both take the same advisory
lock (regio_common.migrations), so running side by side applies each migration once."""

from __future__ import annotations

import asyncio

from regio_billing.database import SCHEMA, migrate
from regio_billing.settings import BillingSettings
from regio_common.logging import configure_logging


def main() -> None:
    settings = BillingSettings()
    log = configure_logging("billing-migrate", settings.log_level, settings.log_format)
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except Exception:
        log.exception("migrations_failed", schema=SCHEMA)
        raise SystemExit(1) from None
    log.info("migrations_done", schema=SCHEMA, applied=applied)


if __name__ == "__main__":
    main()
