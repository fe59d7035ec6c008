"""The `flux` command: `flux serve` runs the server; the other commands talk to one over HTTP,
mirroring scripts/flux.sh."""

from __future__ import annotations

import logging
import os
import sys

import click

from flux import __version__
from flux.config import SETTINGS, ConfigError, Settings


def _settings_help() -> str:
    lines = ["\b", "Environment variables (flags win):"]
    for s in SETTINGS:
        lines.append(f"  {s.env:<42} {s.help} [default: {s.default}]")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flux")
def main() -> None:
    """Flux: publish events and query shared world state.

    Start a server with `flux serve`; the other commands talk to the server at $FLUX_URL
    (default http://localhost:3000), with $FLUX_TOKEN as bearer token when set.
    """


@main.command(epilog=_settings_help())
@click.option("--host", default=None, help="Address to bind [default: 127.0.0.1, $FLUX_HOST].")
@click.option("--port", type=int, default=None, help="TCP port [default: 3000, $PORT].")
@click.option(
    "--data-dir",
    default=None,
    help="Where the event log and snapshots live [default: ./flux-data, $FLUX_DATA_DIR].",
)
def serve(host: str | None, port: int | None, data_dir: str | None) -> None:
    """Run the Flux server (SQLite event log and snapshots in the data dir by default)."""
    import uvicorn

    from flux.api.app import create_app

    try:
        settings = Settings.from_env(os.environ, host=host, port=port, data_dir=data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    level = settings.log_level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("flux").info(
        "Flux %s starting: data dir %s, event log %s",
        __version__,
        os.path.abspath(settings.data_dir),
        settings.event_log_url(),
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(1)
