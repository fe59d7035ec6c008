"""Flux benchmark harness: `bench/run` (see bench/README.md)."""
