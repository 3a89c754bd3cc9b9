"""The app's live outputs: --serve/--lsl options, and the controller's runs feeding a live server."""
from __future__ import annotations

import urllib.request

import pytest

from rtfer.ui.controller import Controller
from test_live import _WSClient  # noqa: F401 - a real WebSocket client

pytest.importorskip("aiohttp", reason="the live extra is not installed")


def test_app_refuses_a_network_address_without_a_token(capsys, monkeypatch):
    from rtfer.ui.app import main

    monkeypatch.delenv("RTFER_SERVE_TOKEN", raising=False)
    assert main(["--serve", "0.0.0.0:8765"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtfer-app: error: --serve 0.0.0.0:8765:") and "--serve-token" in err
    assert err.count("\n") == 1


def test_controller_runs_feed_the_live_server(group_video, fake_factory, fake_options):
    from rtfer.live.server import LiveServer
    from test_ui_controller import Recorder

    rec = Recorder()
    with LiveServer("127.0.0.1", 0) as server:
        client = _WSClient(server.url.replace("http", "ws") + "ws")
        client.start()
        assert client.hello.wait(10)
        ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
        ctl.live_sinks = [server]
        ctl.start(str(group_video), fake_options)
        assert rec.done.wait(20) and rec.finished == ["end"] and not rec.errors
        with urllib.request.urlopen(server.url + "frame.jpg", timeout=10) as response:
            jpeg = response.read()
    client.join(10)
    frames = [m for m in client.messages if m["type"] == "frame"]
    assert len(frames) == len(rec.results) == 12
    assert [len(m["faces"]) for m in frames] == [2] * 12
    assert [m["type"] for m in client.messages if m["type"] != "frame"] == ["hello", "run_start", "run_end", "bye"]
    assert jpeg[:2] == b"\xff\xd8"  # the frame the app annotated
