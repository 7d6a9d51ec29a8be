"""A real headless Chromium (Debian's `chromium`), driven over the DevTools protocol with
websocket-client: no WebDriver, no browser download. Used by tests/test_web_page.py.

    with Chromium(tmp_path) as browser:
        page = browser.page(width=390)
        page.goto("http://127.0.0.1:18790/")
        page.wait("document.querySelector('#login') && !document.querySelector('#login').hidden")
"""
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

from tests.fakes.base import wait_for

KEYS = {"Enter": (13, "\r"), "Tab": (9, "")}


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)


class Chromium:
    def __init__(self, folder: Path):
        self.folder = Path(folder) / "chromium-profile"
        self.proc = None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-port=0", f"--user-data-dir={self.folder}", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = self.folder / "DevToolsActivePort"
        wait_for(lambda: active.exists() and len(active.read_text().split()) >= 2, 30,
                 "Chromium's DevTools port")
        self.port = int(active.read_text().split()[0])
        return self

    def page(self, width: int = 390, height: int = 844) -> "Page":
        """A new tab the size of a phone (390 CSS pixels wide by default)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=10) as r:
            target = json.load(r)
        page = Page(target["webSocketDebuggerUrl"])
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=True)
        return page

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(10)


class Page:
    def __init__(self, url: str):
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression (promises awaited)."""
        r = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 15):
        return wait_for(lambda: self.js(expression), timeout, expression)

    def goto(self, url: str):
        self.send("Page.navigate", url=url)
        time.sleep(0.05)            # the old document may still say "complete" for a moment
        self.wait("document.readyState === 'complete'")

    def type(self, text: str):
        self.send("Input.insertText", text=text)

    def key(self, name: str, shift: bool = False):
        code, text = KEYS[name]
        common = dict(key=name, code=name, windowsVirtualKeyCode=code, modifiers=8 if shift else 0)
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def screenshot(self, path: Path):
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
