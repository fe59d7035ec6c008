"""docs/langgraph.md runs: its `python` blocks are executed in page order, in one namespace,
against a fresh `flux serve` (the server's address in place of `http://localhost:3000`), so the
page's examples and the `assert`s that show their results cannot drift from the store."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from conftest import REPO, FluxServer
from test_docs_sdk import python_blocks

PAGE = REPO / "docs" / "langgraph.md"


def test_the_examples_run_against_a_real_server(
    server_factory: type[FluxServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = server_factory(tmp_path / "data").start()
    # a module of its own, as a script has: LangGraph reads the State's annotations from it
    module = types.ModuleType("langgraph_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    blocks = python_blocks(PAGE.read_text())
    for number, block in enumerate(blocks, 1):
        source = block.replace("http://localhost:3000", srv.url)
        exec(compile(source, f"docs/langgraph.md, block {number}", "exec"), namespace)
    assert len(blocks) >= 9
    assert namespace["flux"]._http.is_closed  # the last block ran
    srv.stop()
    assert "Traceback" not in srv.logs()
