"""A headless chromium driven over the Chrome DevTools Protocol (the serve page and the compare report tests)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium_binary() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (found := shutil.which(name))), None)


class DevTools:
    """A minimal Chrome DevTools Protocol client over the page target's websocket."""

    @classmethod
    def first_page(cls, port: int, timeout: float = 30) -> DevTools:
        """A client of the first page target of the chromium listening on `port`."""
        deadline = time.monotonic() + timeout
        while not (pages := [t for t in json.loads(NO_PROXY.open(f"http://127.0.0.1:{port}/json/list",
                                                                  timeout=10).read()) if t["type"] == "page"]):
            assert time.monotonic() < deadline, "chromium has no page target"
            time.sleep(0.1)
        return cls(pages[0]["webSocketDebuggerUrl"])

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0

    def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self.ws.close()


def start_chromium(binary: str, profile: Path) -> tuple[subprocess.Popen, int]:
    """A headless chromium with a DevTools port (chosen by chromium: read from its stderr)."""
    browser = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1100,1400", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: list[int] = []

    def read() -> None:
        for line in browser.stderr:
            if match := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                found.append(int(match.group(1)))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while not found:
        if browser.poll() is not None or time.monotonic() > deadline:
            browser.kill()
            raise RuntimeError(f"chromium did not open its DevTools port (exit status {browser.poll()})")
        time.sleep(0.05)
    return browser, found[0]


@contextmanager
def headless_page(binary: str, profile: Path) -> Iterator[DevTools]:
    """A headless chromium's first page, closed (and the browser stopped) on leaving."""
    browser, port = start_chromium(binary, profile)
    devtools = None
    try:
        devtools = DevTools.first_page(port)
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(timeout=20)
