"""Connectors: external sources polled on an interval whose data become live entities.

`base` holds the `Connector` Protocol and the catalogue of known connectors, `runner` the
scheduler that polls them; one module per connector (e.g. `github`).
"""
