from __future__ import annotations

from collections.abc import Iterator

import pytest

from browser import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for a module's tests (each test opens its own page)."""
    chromium = Browser()
    yield chromium
    chromium.quit()
