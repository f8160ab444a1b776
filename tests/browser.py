"""Headless Chromium for the HTML tests, over the DevTools protocol on a pipe, with the standard library only.

``chromium_or_skip()`` finds a Chromium that runs (else skips the test with a clear message); ``_Chromium`` drives
it; ``open_tab`` makes a page session; ``_load`` opens a URL and returns the page's facts (broken images, script
count, text, links) and the errors it logged (console errors, JS exceptions, failed loads);
``full_page_screenshot`` captures the whole page, not just the viewport.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

def _chromium() -> str | None:
    for name in (os.environ.get("GLASSLLAVA_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
    replies on fd 4, NUL-terminated JSON), so no port and no library beyond the standard one."""

    def __init__(self, exe: str, profile: Path):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def fds():  # in the child: the pipe ends onto fds 3 and 4, by way of fds >= 10 in case they are 3 or 4 already
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target)  # inheritable

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--hide-scrollbars", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=fds, close_fds=False,
        )
        os.close(to_child)
        os.close(from_child)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self.events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._r, 1 << 16):
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._id in self._replies, timeout):
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                msg = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(msg)
            if msg.get("method") == method:
                for m in seen[:-1]:  # keep the others for the error check
                    self.events.put(m)
                return msg
        raise TimeoutError(f"no {method} in {timeout} s")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)


_CHECK_IMAGES = """
Promise.all(Array.from(document.images).map(img => {
  img.loading = 'eager';
  return img.decode().then(() => img.naturalWidth > 0 ? null : img.getAttribute('src'), () => img.getAttribute('src'));
})).then(bad => JSON.stringify({
  url: location.href, broken: bad.filter(Boolean), images: document.images.length, scripts: document.scripts.length,
  title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
  links: Array.from(document.links).map(a => a.href), text: document.body.innerText}))
"""


def _load(browser: _Chromium, session: str, url: str, screenshot: Path | None = None) -> dict:
    """Open ``url``, wait for it to load, check every image decodes; the page's facts, and the errors it logged."""
    earlier = []
    while not browser.events.empty():  # a load event of the page before must not count as this one's
        earlier.append(browser.events.get())
    browser.send("Page.navigate", {"url": url}, session)
    browser.wait_event("Page.loadEventFired")
    for ev in earlier:
        browser.events.put(ev)
    facts = json.loads(browser.send("Runtime.evaluate", {"expression": _CHECK_IMAGES, "awaitPromise": True, "returnByValue": True},
                                    session)["result"]["value"])
    assert facts["url"] == url
    if screenshot is not None:
        data = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        screenshot.write_bytes(base64.b64decode(data))
    errors = []
    while not browser.events.empty():
        ev = browser.events.get()
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
    facts["errors"] = errors
    return facts


def chromium_or_skip() -> str:
    """The path of a Chromium that runs; skips the calling test (with the reason) where there is none."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not found (apt-get install chromium, or set GLASSLLAVA_CHROMIUM to a Chrome/Chromium binary)")
    try:
        probe = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{exe} does not run: {e}")
    if probe.returncode != 0:  # e.g. Ubuntu's snap stub inside a container
        pytest.skip(f"{exe} --version failed: {(probe.stderr or probe.stdout).strip()[-300:]}")
    return exe


def open_tab(browser: _Chromium, width: int = 1280, height: int = 1000) -> str:
    """A new page with Page, Runtime and Log events on, at ``width`` × ``height``; its session id."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for method in ("Page.enable", "Runtime.enable", "Log.enable"):
        browser.send(method, session=session)
    browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    return session


def full_page_screenshot(browser: _Chromium, session: str, path: Path, max_height: int = 16000) -> tuple[int, int]:
    """A PNG of the whole loaded page (up to ``max_height`` px tall) at ``path``; (width, height) of the page."""
    metrics = browser.send("Page.getLayoutMetrics", session=session)
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width, height = int(size["width"]), min(int(size["height"]), max_height)
    data = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                   "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
                        session, timeout=60)["data"]
    path.write_bytes(base64.b64decode(data))
    return width, height
