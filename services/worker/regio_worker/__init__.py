"""The Regio worker: serves one route in one country, taking inference requests from NATS and
streaming the generated text back, then publishing a usage record for billing."""
