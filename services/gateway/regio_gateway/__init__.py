"""The edge gateway: OpenAI-compatible HTTP API, key check, credit hold, dispatch over NATS."""
