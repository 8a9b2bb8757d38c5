"""The docs render readably: no code block or diagram scrolls sideways.

Renders the built HTML of the tutorial, internals, results, engineering, handlers
and command-line pages in headless
Chromium at 1280 CSS pixels wide and asks the page itself, in JavaScript,
whether any code block, diagram, table or image is wider than the column it
sits in (``scrollWidth`` beyond ``clientWidth``, or a right edge past the
article's). A full-page screenshot of each page is saved beside the build
(``docs/_build/screenshots/<page>.png``) for a person to look at.

It drives Chromium through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages ending in a NUL byte, read on the
browser's fd 4 and written on its fd 3), so nothing listens on a port and no
network is used. It runs after the HTML build, in ``tox -e docs``, which sets
``PYSERVE_DOCS_HTML`` to the built pages; elsewhere it is skipped. A missing
Chromium skips locally and fails under ``CI=true`` (.ci/run installs chromium).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from peers import missing_peer

HTML = os.environ.get("PYSERVE_DOCS_HTML")
PAGES = ("tutorial", "internals", "results", "engineering", "handlers", "cli")
WIDTH = 1280  # CSS pixels: a common laptop screen
MAX_SCREENSHOT_HEIGHT = 20000  # pixels; a longer page is cut there (the test is not)
DEADLINE = 60.0  # seconds for any one browser answer

pytestmark = pytest.mark.skipif(
    not HTML, reason="renders built HTML: run by `tox -e docs` (PYSERVE_DOCS_HTML unset)"
)

# Every element that holds preformatted text or a picture, and the column it
# must fit: furo's article. A <pre> that needs a scroll bar has scrollWidth >
# clientWidth; anything wider than the article pokes out on the right.
_MEASURE = """
(() => {
  const article = document.querySelector("article") || document.body;
  // furo's table wrapper is the article's width plus its own 3.2 px padding on
  // each side, inside the article's 3em margin: a few pixels are not overflow.
  const limit = article.getBoundingClientRect().right + 8;
  const found = [];
  // Tables are checked through the wrapper that furo scrolls them in.
  const selectors = "pre, div.highlight, div.graphviz, object, svg, img, div.table-wrapper";
  for (const el of article.querySelectorAll(selectors)) {
    const rect = el.getBoundingClientRect();
    if (rect.width === 0) continue;
    const scrolls = el.scrollWidth > el.clientWidth + 1 && el.tagName !== "svg";
    if (scrolls || rect.right > limit) {
      found.push({
        tag: el.tagName.toLowerCase(),
        width: Math.round(rect.width),
        needs: el.scrollWidth,
        text: (el.innerText || el.getAttribute("src") || el.getAttribute("data") || "")
              .trim().split("\\n")[0].slice(0, 80),
      });
    }
  }
  const box = article.getBoundingClientRect();
  return {
    column: Math.round(box.width),
    column_left: Math.round(box.left),
    column_right: Math.round(box.right),
    screen: window.innerWidth,
    height: Math.ceil(document.documentElement.scrollHeight),
    overflowing: found,
  };
})()
"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    missing_peer("Chromium is not installed (Debian package: chromium)")


class Browser:
    """One headless Chromium, spoken to over the DevTools pipe."""

    def __init__(self, executable: str, profile: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4; move the
        # ends there in the child (high copies first, so no dup2 clobbers another).
        high = [os.dup(fd) for fd in (to_browser_r, from_browser_w)]

        def at_fds_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=at_fds_3_and_4, pass_fds=(3, 4),  # noqa: PLW1509 - no threads here
        )
        for fd in (to_browser_r, from_browser_w, *high):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def send(self, method: str, session: Optional[str] = None, **params: Any) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        for event in self._events:
            if event.get("method") == method:
                self._events.remove(event)
                return event
        while True:
            message = self._read()
            if message.get("method") == method:
                return message
            self._events.append(message)

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], DEADLINE)
            if not ready:
                raise TimeoutError(f"Chromium did not answer within {DEADLINE} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        result: dict[str, Any] = json.loads(message)
        return result

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(DEADLINE)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    with tempfile.TemporaryDirectory(prefix="pyserve-docs-chromium-") as profile:
        running = Browser(executable, profile)
        try:
            yield running
        finally:
            running.close()


def render(browser: Browser, page: Path, screenshot: Path) -> dict[str, Any]:
    """Load ``page`` at WIDTH, measure it, and save a full-page screenshot."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=900,
                     deviceScaleFactor=1, mobile=False)
        browser.send("Page.enable", session)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for_event("Page.loadEventFired")
        measured: dict[str, Any] = browser.send(
            "Runtime.evaluate", session, expression=_MEASURE, returnByValue=True
        )["result"]["value"]
        height = min(measured["height"], MAX_SCREENSHOT_HEIGHT)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=height,
                     deviceScaleFactor=1, mobile=False)
        shot = browser.send("Page.captureScreenshot", session, format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return measured
    finally:
        browser.send("Target.closeTarget", targetId=target)


@pytest.mark.parametrize("name", PAGES)
def test_no_code_block_or_diagram_overflows_its_column(browser: Browser, name: str) -> None:
    assert HTML is not None
    built = Path(HTML)
    page = built / f"{name}.html"
    assert page.exists(), f"{page} was not built"
    screenshots = built.parent / "screenshots"
    screenshots.mkdir(exist_ok=True)
    measured = render(browser, page, screenshots / f"{name}.png")
    assert measured["column"] >= 600, f"the article column is only {measured['column']} px"
    assert measured["column_left"] >= 0, measured
    assert measured["column_right"] <= measured["screen"], f"article past the screen: {measured}"
    assert measured["overflowing"] == [], (
        f"{name}.html at {WIDTH} px: these scroll sideways or stick out of the "
        f"{measured['column']} px column: {json.dumps(measured['overflowing'], indent=1)}"
    )
