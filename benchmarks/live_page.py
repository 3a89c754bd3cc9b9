"""The live page in a real browser: play videos in real time through ``--serve`` and screenshot the page in headless
Chromium (the system package) a few seconds apart.

    python benchmarks/live_page.py VIDEO [VIDEO ...] --out DIR [--shots 3] [--every 4] [--bundle default]

The videos play one after the other at their own frame rate (as the app plays a file), looping until the last
screenshot, into a :class:`rtfer.live.server.LiveServer` on a free loopback port. Chromium runs headless with a fresh
profile and no network besides loopback; the script drives it through the DevTools protocol (with aiohttp, the live
extra's WebSocket client): it opens the page, then every ``--every`` seconds saves ``DIR/live-N.png`` and prints what
the page shows (face cards, bars, status, the frame's width, a checksum of the timeline). Needs ``chromium`` on
PATH (``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--mute-audio", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
PAGE_STATE_JS = """JSON.stringify({
  faces: document.querySelectorAll('#faces .face').length,
  bars: document.querySelectorAll('#faces .bar').length,
  status: document.getElementById('status').textContent,
  source: document.getElementById('source').textContent,
  rate: document.getElementById('rate').textContent,
  frame: document.getElementById('frame').hidden ? null : document.getElementById('frame').naturalWidth,
  timeline: (() => { const c = document.getElementById('timeline'); const d = c.getContext('2d')
      .getImageData(0, 0, c.width, c.height).data; let h = 0;  // a checksum of the timeline's pixels
      for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) % 1000000007; return h; })()
})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium with a fresh profile, driven through the DevTools protocol."""

    def __init__(self, width: int = 1280, height: int = 960, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise RuntimeError("chromium not found (apt-get install chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="rtfer-chromium-"))
        self.proc = subprocess.Popen([self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self._session = None
        self._ws = None
        self._id = 0

    async def connect(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{self.port}/json") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def call(self, method: str, **params):
        self._id += 1
        await self._ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        async for msg in self._ws:
            data = json.loads(msg.data)
            if data.get("id") == self._id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
        raise RuntimeError("the DevTools connection closed")

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(result["data"]))

    async def state(self) -> dict:
        result = await self.call("Runtime.evaluate", expression=PAGE_STATE_JS, returnByValue=True)
        return json.loads(result["result"]["value"])

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def page_ready(state: dict) -> bool:
    """The page shows faces and a decoded frame (what a first screenshot should wait for)."""
    return bool(state.get("faces")) and bool(state.get("frame"))


async def shoot(url: str, out: Path, shots: int, every_s: float, browser: Browser, first_s: float = 3.0,
                ready_timeout_s: float = 30.0) -> list[dict]:
    """Open ``url`` and save ``shots`` screenshots ``every_s`` apart, the first after ``first_s`` and once the page
    shows faces and a frame (waiting at most ``ready_timeout_s`` more: a loaded machine draws late)."""
    await browser.connect()
    try:
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=url)
        states = []
        await asyncio.sleep(first_s)
        deadline = time.monotonic() + ready_timeout_s
        while not page_ready(await browser.state()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for i in range(shots):
            if i:
                await asyncio.sleep(every_s)
            path = out / f"live-{i + 1}.png"
            await browser.screenshot(path)
            state = await browser.state()
            state["png"] = str(path)
            states.append(state)
            log.info("%s: %s", path, state)
        return states
    finally:
        await browser.aclose()


def play(server, videos: list[str], options, stop: threading.Event) -> None:
    """Play ``videos`` in real time into ``server`` until ``stop``."""
    from rtfer.pipeline import Pipeline
    from rtfer.run import Pacing, Run, open_input

    pipeline = Pipeline(options)
    paused = threading.Event()
    while not stop.is_set():
        for video in videos:
            if stop.is_set():
                return
            source = open_input(video, pacing=Pacing(paused, stop))
            Run(pipeline, source, sinks=[server], cancel=stop).execute()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+")
    p.add_argument("--out", type=Path, required=True, help="folder for live-N.png")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--every", type=float, default=4.0, help="seconds between screenshots")
    p.add_argument("--bundle", default="default")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=960)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rtfer.live.server import LiveServer
    from rtfer.pipeline import AnalyzeOptions

    args.out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    with LiveServer("127.0.0.1", 0) as server:
        player = threading.Thread(target=play, args=(server, args.videos, AnalyzeOptions(bundle=args.bundle), stop),
                                  daemon=True)
        player.start()
        browser = Browser(args.width, args.height)
        try:
            states = asyncio.run(shoot(server.url, args.out, args.shots, args.every, browser))
        finally:
            stop.set()
            browser.close()
            player.join(30)
    print(json.dumps(states, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
