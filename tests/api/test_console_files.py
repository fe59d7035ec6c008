"""The console's files ship in the package: every file of `console_static/` is served, and the
package data in pyproject.toml takes them into a wheel."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from starlette.testclient import TestClient

from flux.api.console import ASSET_DIR, ASSETS

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_is_served_with_its_type(client: TestClient) -> None:
    files = {
        entry.name
        for entry in resources.files("flux.api").joinpath(ASSET_DIR).iterdir()
        if entry.is_file()
    }
    assert set(ASSETS) == files
    for name in files - {"index.html"}:
        answer = client.get(f"/console/{name}")
        assert answer.status_code == 200, name
        assert answer.content == ASSETS[name][0]
        assert answer.headers["content-type"] == ASSETS[name][1]
        assert "script-src 'self'" in answer.headers["content-security-policy"]
    page = client.get("/")
    assert page.content == ASSETS["index.html"][0]
    assert client.get("/console/index.html").status_code == 404  # the page lives at `/`


def test_the_package_data_takes_the_files_into_a_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"{ASSET_DIR}/*" in config["tool"]["setuptools"]["package-data"]["flux.api"]


def test_the_page_has_no_inline_script_or_style() -> None:
    page = ASSETS["index.html"][0].decode()
    assert "<script>" not in page and "<style" not in page and "style=" not in page
    assert re.search(r"\son\w+=", page) is None  # no inline event handler
    assert '<script type="module" src="/console/main.js"></script>' in page
