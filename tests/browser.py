"""A real headless Chromium for the console's tests, driven by Selenium through Debian's
`chromium` and `chromium-driver` (scripts/test installs them when missing).

`Browser` wraps a WebDriver with what the tests need: open a page, wait for a JavaScript
condition (and say how long it took), the page's console errors, screenshots.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"{' or '.join(names)} not found: install Debian's chromium and chromium-driver "
        "(scripts/test does when run as root)"
    )


class Browser:
    """One headless Chromium window (1280x900)."""

    def __init__(self) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = _tool("chromium", "chromium-browser")
        for argument in (
            "--headless=new",
            "--no-sandbox",  # as root in CI
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--disable-background-timer-throttling",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(
            service=Service(_tool("chromedriver")),
            options=options,
        )

    def quit(self) -> None:
        self.driver.quit()

    def open(self, url: str) -> None:
        """Load `url` and wait until the console's live connection is subscribed. What the
        previous page logged (a page of a stopped server retrying its connection) is dropped."""
        self.driver.get("about:blank")
        self.driver.get_log("browser")
        self.driver.get(url)
        self.wait("window.fluxConsole && window.fluxConsole.connected", "the live connection")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: str, what: str, timeout: float = 10.0) -> float:
        """Poll the JavaScript expression `condition` until it is truthy (one that throws is
        false); returns the seconds it took. Raises AssertionError after `timeout`."""
        started = time.monotonic()
        while True:
            # Not there yet (an element still missing) counts as false, not as an error.
            if self.js(f"try {{ return Boolean({condition}); }} catch (e) {{ return false; }}"):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; {self._situation()}"
                )
            time.sleep(0.02)

    def _situation(self) -> str:
        """What the page showed and logged, for a timeout's message: its last notice (an
        error it put up) and its console's warnings and errors."""
        try:
            shown = self.js(
                "const n = document.getElementById('notice');"
                "return n ? `${n.className}: ${n.textContent}` : null;"
            )
            return f"the page's notice: {shown!r}; its console: {self.problems()!r}"
        except Exception as exc:  # the page itself is gone
            return f"the page did not answer: {exc!r}"

    def wait_click(self, css: str, condition: str, what: str, timeout: float = 10.0) -> float:
        """Click `css`, then wait for `condition`; returns the seconds from click to done."""
        started = time.monotonic()
        self.find(css).click()
        self.wait(condition, what, timeout)
        return time.monotonic() - started

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def texts(self, css: str) -> list[str]:
        return [
            str(text)
            for text in self.js(
                "return [...document.querySelectorAll(arguments[0])].map(n => n.textContent);", css
            )
        ]

    def problems(self) -> list[dict[str, Any]]:
        """The page's console messages at warning level or above since the last call."""
        logs: list[dict[str, Any]] = self.driver.get_log("browser")
        return [entry for entry in logs if entry["level"] in ("WARNING", "SEVERE")]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
