"""The example connector in docs/connectors/writing.md and its tests run as written: the first
python block is the connector module (`flux.connectors.statuspage`), the second its test
file, whose tests are run here."""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import REPO

DOC = REPO / "docs" / "connectors" / "writing.md"
MODULE = "flux.connectors.statuspage"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def example_tests() -> Iterator[dict[str, Any]]:
    connector_source, test_source = python_blocks()
    module = types.ModuleType(MODULE)
    module.__file__ = str(DOC)
    sys.modules[MODULE] = module
    try:
        exec(compile(connector_source, f"{DOC}:connector", "exec"), module.__dict__)
        namespace: dict[str, Any] = {"__name__": "test_statuspage"}
        exec(compile(test_source, f"{DOC}:tests", "exec"), namespace)
        yield namespace
    finally:
        del sys.modules[MODULE]


def test_the_page_has_the_two_blocks() -> None:
    assert len(python_blocks()) == 2


def test_the_documented_tests_pass(example_tests: dict[str, Any]) -> None:
    tests = {n: f for n, f in example_tests.items() if n.startswith("test_") and callable(f)}
    assert len(tests) == 4
    for test in tests.values():
        assert not inspect.signature(test).parameters  # no fixtures needed
        test()
