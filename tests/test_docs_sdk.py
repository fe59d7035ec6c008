"""docs/sdk.md runs: its `python` blocks are executed in page order, in one namespace, against
a fresh `flux serve` (the server's address in place of `http://localhost:3000`), so the page's
examples and the `assert`s that show their results cannot drift from the SDK. The page also
names every public method of the clients."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from conftest import REPO, FluxServer
from flux.client import AsyncFluxClient, FluxClient

PAGE = REPO / "docs" / "sdk.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    found = FENCE.findall(text)
    assert {lang for lang, _ in found} == {"python"}, "a block the test does not run"
    return [block for _, block in found]


def test_the_examples_run_against_a_real_server(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    # no directory entity: its updates would take versions between the examples'
    env = {"FLUX_DIRECTORY_INTERVAL_SECONDS": "0"}
    srv = server_factory(tmp_path / "data", env=env).start()
    namespace: dict[str, Any] = {"__name__": "sdk_examples"}
    blocks = python_blocks(PAGE.read_text())
    for number, block in enumerate(blocks, 1):
        source = block.replace("http://localhost:3000", srv.url)
        exec(compile(source, f"docs/sdk.md, block {number}", "exec"), namespace)
    assert len(blocks) >= 10
    assert namespace["flux"]._http.is_closed  # the last block ran
    srv.stop()
    assert "Traceback" not in srv.logs()


def test_the_page_names_every_method() -> None:
    text = PAGE.read_text()
    sync, async_ = FluxClient(), AsyncFluxClient()
    for client in (sync, async_):
        names = {name for name in dir(client) if not name.startswith("_")}
        methods = {name for name in names if callable(getattr(client, name))}
        assert {"publish", "lease_acquire", "namespace_delete", "watch", "claim"} <= methods
        missing = {name for name in methods if f"`{name}" not in text}
        assert not missing, f"docs/sdk.md does not name {sorted(missing)}"
    sync.close()
    asyncio.run(async_.aclose())
