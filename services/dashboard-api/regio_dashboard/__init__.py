"""The dashboard API: accounts, API keys, credits and route activations (admin REST API)."""
