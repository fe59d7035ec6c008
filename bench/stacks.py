"""ASGI entry points for other server stacks (issue 6, item 3), e.g.

    granian --interface asgi --factory bench.stacks:flux_app

`flux_app` builds Flux's app exactly as `flux serve` does (settings from the FLUX_* environment,
the same 1 ms switch interval, logging to stderr); the server's lifespan support starts and
stops the service. `ceiling_app` is bench/ceiling.py's no-work app. Only the server differs from
what `flux serve` and the ceiling run on uvicorn.
"""

from __future__ import annotations

import logging
import os
import sys

from starlette.applications import Starlette

from bench import ceiling


def flux_app() -> Starlette:
    from flux.api.app import create_app
    from flux.config import Settings

    settings = Settings.from_env(os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # As in `flux serve` (src/flux/cli.py): lets the log writer thread take the GIL back quickly.
    sys.setswitchinterval(0.001)
    return create_app(settings)


def ceiling_app() -> Starlette:
    return ceiling.create_app()
