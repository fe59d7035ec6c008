"""Flux: a shared, event-sourced world-state engine."""

__version__ = "0.1.0"
