"""`python -m regio_billing.migrate`: apply the billing schema's pending migrations and exit.

Run by the Kubernetes migrations Job (deploy/k8s/base/migrations-job.yaml) before a release's
pods start. The service applies pending migrations at start as well; both take the same advisory
lock (regio_common.migrations), so running side by side applies each migration once."""

from __future__ import annotations

from regio_billing.database import MIGRATIONS_FOLDER, SCHEMA
from regio_billing.settings import BillingSettings
from regio_common.migrations import run_migrations_command


def main() -> None:
    settings = BillingSettings()
    run_migrations_command(
        "billing",
        settings.database_url,
        SCHEMA,
        MIGRATIONS_FOLDER,
        settings.log_level,
        settings.log_format,
    )


if __name__ == "__main__":
    main()
