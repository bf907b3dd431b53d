"""`python -m regio_dashboard.migrate`: apply the dashboard schema's pending migrations and exit.

Run by the Kubernetes migrations Job (deploy/k8s/base/migrations-job.yaml) before a release's
pods start. The service applies pending migrations at start as well; both take the same advisory
lock (regio_common.migrations), so running side by side applies each migration once."""

from __future__ import annotations

from regio_common.migrations import run_migrations_command
from regio_dashboard.app import MIGRATIONS
from regio_dashboard.settings import DashboardSettings

SCHEMA = "dashboard"


def main() -> None:
    settings = DashboardSettings()
    run_migrations_command(
        "dashboard",
        settings.database_url,
        SCHEMA,
        MIGRATIONS,
        settings.log_level,
        settings.log_format,
    )


if __name__ == "__main__":
    main()
