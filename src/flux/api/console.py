"""The web console: a page at `/` and its assets under `/console/`, shipped in the package.

The page is plain ES modules (no build step, no CDN; docs/dependencies.md says why), and talks
to Flux only through the public API (HTTP and `/api/ws`), so it sees what its token may and no
more. Every file is read once, when the app is made; an unknown name is a 404 JSON error. The
responses carry a Content-Security-Policy that allows only this origin's scripts, styles and
connections and no inline script, so an entity's text can never run as code in the page.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from flux.errors import NotFound

ASSET_DIR = "console_static"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    """Every asset by file name, with its media type."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("flux.api").joinpath(ASSET_DIR).iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in TYPES:
            found[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return found


ASSETS = _load()


def _serve(name: str) -> Response:
    body, media_type = ASSETS[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    """The console's page (`GET /`)."""
    return _serve("index.html")


async def asset(request: Request) -> Response:
    """One of the console's files (`GET /console/{name}`); 404 for any other name."""
    name = request.path_params["name"]
    if name not in ASSETS or name == "index.html":
        raise NotFound(f"No console file named {name!r}")
    return _serve(name)
