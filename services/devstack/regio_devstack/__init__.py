"""The one-machine stack: real nats-server and PostgreSQL from PyPI wheels, and every Regio
service as a child process. Used by `make run` and by the integration and e2e test fixtures."""
