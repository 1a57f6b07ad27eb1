"""Open a report in headless Chromium and say what a person would see.

Used by the tests (and by anyone who wants to check a report on a machine without a
screen): the page is loaded over the DevTools protocol, console messages and uncaught
errors are collected, an in-page script measures every plot (data elements present, with
points, laid out with a non-empty box) and the topology diagram, and a full-page
screenshot is written. Chromium runs with a fresh profile, no network features, and is
always stopped. The websocket client is tornado's (already installed with dask).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TcpreuseError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")

CHECK_JS = r"""
(() => {
  const plots = [...document.querySelectorAll('figure.plot')].map(f => {
    const key = f.dataset.plot;
    const groups = [...f.querySelectorAll('[id^="' + key + '-data-"]')];
    let elements = 0, points = 0, box = 0;
    for (const g of groups) {
      for (const el of g.querySelectorAll('path, use, rect, image')) {
        const d = el.getAttribute('d');
        if (el.tagName !== 'path' || (d && d.trim().length)) elements++;
        if (d) points += (d.match(/[MLC]/g) || []).length;
        if (el.tagName === 'use') points++;
      }
      const b = g.getBBox();
      box += b.width + b.height;
    }
    const svg = f.querySelector('svg');
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {key, title: (f.querySelector('h3') || {}).textContent || '', groups: groups.length, elements,
            points, box, width: r.width, height: r.height};
  });
  const external = [...document.querySelectorAll('[src], [href]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => /^(https?:)?\/\//i.test(u || ''));
  return {title: document.title, plots,
          topology_nodes: document.querySelectorAll('svg.topology .topo-node').length,
          findings: document.querySelectorAll('.finding').length,
          verdict: (document.querySelector('.verdict') || {}).textContent || '',
          scripts: document.scripts.length, external,
          height: document.documentElement.scrollHeight};
})()
"""


@dataclass
class PageCheck:
    """What the browser saw. `problems()` is empty when the page is as it should be."""

    url: str
    console: list[str] = field(default_factory=list)  # errors and warnings, as "level: text"
    plots: list[dict[str, Any]] = field(default_factory=list)
    topology_nodes: int = 0
    findings: int = 0
    verdict: str = ""
    title: str = ""
    external: list[str] = field(default_factory=list)
    scripts: int = 0
    screenshot: Path | None = None

    def plot(self, key: str) -> dict[str, Any]:
        for p in self.plots:
            if p["key"] == key:
                return p
        raise KeyError(key)

    def problems(self) -> list[str]:
        out = [f"console {c}" for c in self.console if c.startswith(("error", "exception"))]
        for p in self.plots:
            if not (p["groups"] and p["elements"] and p["points"] >= 2 and p["box"] > 0):
                out.append(f"plot {p['key']!r} has no drawn data: {p}")
            if p["width"] < 100 or p["height"] < 50:
                out.append(f"plot {p['key']!r} is not laid out: {p['width']}x{p['height']}")
        out += [f"external resource {u}" for u in self.external]
        return out


def find_chromium() -> str | None:
    for c in CANDIDATES:
        path = shutil.which(c)
        if path:
            return path
    return None


def check_page(path: str | Path, screenshot: str | Path | None = None, timeout: float = 60.0,
               width: int = 1200) -> PageCheck:
    """Load the HTML file at `path` in headless Chromium and measure it."""
    exe = find_chromium()
    if exe is None:
        raise TcpreuseError("no Chromium found", hint="apt-get install chromium (scripts/system-deps.sh)")
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="tcpr-chromium-")
    # Chromium's own temporary files (its singleton socket directory,
    # org.chromium.Chromium.*) go into the profile, removed below: in TMPDIR they outlived
    # a terminated browser
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "TMPDIR": profile})
    try:
        port = _devtools_port(Path(profile), proc, timeout)
        return asyncio.run(asyncio.wait_for(_drive(port, url, screenshot, width), timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    f = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TcpreuseError(f"Chromium exited at start (status {proc.returncode})")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(f.read_text().split()[0])
        time.sleep(0.05)
    raise TcpreuseError("Chromium did not open its DevTools port in time")


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        await self.ws.write_message(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = await self.ws.read_message()
            if msg is None:
                raise TcpreuseError("Chromium closed the DevTools connection")
            d = json.loads(msg)
            if d.get("id") == my:
                if "error" in d:
                    raise TcpreuseError(f"DevTools {method}: {d['error'].get('message')}")
                return dict(d.get("result", {}))
            if "method" in d:
                self.events.append(d)

    async def wait_event(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == name for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TcpreuseError(f"Chromium: no {name} in {timeout:g} s")
            msg = await asyncio.wait_for(self.ws.read_message(), left)
            if msg is None:
                raise TcpreuseError("Chromium closed the DevTools connection")
            d = json.loads(msg)
            if "method" in d:
                self.events.append(d)


async def _drive(port: int, url: str, screenshot: str | Path | None, width: int) -> PageCheck:
    from tornado.websocket import websocket_connect

    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:  # loopback: the browser we started
        target = json.loads(r.read())
    ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=256 << 20)
    try:
        cdp = _Cdp(ws)
        for m in ("Runtime.enable", "Log.enable", "Page.enable"):
            await cdp.call(m)
        await cdp.call("Page.navigate", url=url)
        await cdp.wait_event("Page.loadEventFired", 30)
        res = await cdp.call("Runtime.evaluate", expression=CHECK_JS, returnByValue=True)
        if "exceptionDetails" in res:
            raise TcpreuseError(f"page check script failed: {res['exceptionDetails'].get('text')}")
        v = res["result"]["value"]
        check = PageCheck(url=url, plots=v["plots"], topology_nodes=v["topology_nodes"], findings=v["findings"],
                          verdict=" ".join(v["verdict"].split()), title=v["title"], external=v["external"],
                          scripts=v["scripts"])
        if screenshot is not None:
            height = min(int(v["height"]) + 20, 16000)
            await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                           mobile=False)
            shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            p = Path(screenshot)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(base64.b64decode(shot["data"]))
            check.screenshot = p
        check.console = _console(cdp.events)
        return check
    finally:
        ws.close()


def _console(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}".strip())
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"{'error' if p['type'] != 'warning' else 'warning'}: {args}")
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            en = p["entry"]
            out.append(f"{en['level']}: {en.get('text', '')} {en.get('url', '')}".strip())
    return out
