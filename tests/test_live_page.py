"""The live page in a real browser (headless Chromium from the system packages; skipped where it is not installed),
and the live extra staying unimported until an option asks for it."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_live_extra_is_imported_only_when_an_option_asks_for_it():
    code = ("import sys; from rtfer.cli import build_parser; import rtfer.run; build_parser(); "
            "print(sorted(m for m in ('aiohttp', 'pylsl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _load_live_page():
    return load_benchmark("live_page")


@pytest.mark.slow
def test_live_page_in_headless_chromium_updates_its_timeline(tmp_path):
    pytest.importorskip("aiohttp", reason="the live extra is not installed")
    live_page = _load_live_page()
    if live_page.find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from rtfer.live.server import LiveServer
    from test_live import _results

    image = np.full((360, 640, 3), 90, np.uint8)
    stop = threading.Event()

    def feed(server) -> None:  # 25 frames a second, three faces whose probabilities change
        for result in _results(100000, faces=3, image=image):
            if stop.wait(0.04):
                return
            server.append(result)

    with LiveServer("127.0.0.1", 0) as server:
        server.run_started({"source": "synthetic", "kind": "video", "bundle": "test 0"})
        feeder = threading.Thread(target=feed, args=(server,), daemon=True)
        feeder.start()
        browser = live_page.Browser(1000, 800)
        try:
            states = asyncio.run(live_page.shoot(server.url, tmp_path, 2, 2.0, browser, first_s=3.0))
        finally:
            stop.set()
            browser.close()
            feeder.join(5)
    first, second = states
    for state in states:
        assert state["status"] == "live (WebSocket)"
        assert state["faces"] == 3 and state["bars"] == 21
        assert state["source"].startswith("synthetic") and state["frame"] == 640  # the JPEG arrived
    assert first["rate"] != second["rate"]  # frames went on
    assert first["timeline"] != second["timeline"]  # the valence timeline scrolled
    a, b = (Path(s["png"]).read_bytes() for s in states)
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != b  # the page changed between the shots
