"""Inference engines: the model side of the worker, independent of NATS."""
