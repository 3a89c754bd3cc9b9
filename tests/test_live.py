"""Live outputs (rtfer.live): the LSL outlet and the live server, checked with real clients (a pylsl inlet, an aiohttp
WebSocket client, a Server-Sent Events reader, a raw socket that never reads) against the CSV of the same run."""
from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import socket
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import bundle_args, run_cli
from rtfer.errors import RtferError
from rtfer.labels import CLASSES
from rtfer.live import check_serve, is_loopback, open_live_sinks, parse_address
from rtfer.types import EmotionScores, Faces, FrameResult

aiohttp = pytest.importorskip("aiohttp", reason="the live extra is not installed")
pylsl = pytest.importorskip("pylsl", reason="the live extra is not installed")

from rtfer.live.lsl import CHANNELS, LSLSink  # noqa: E402
from rtfer.live.messages import dumps, frame_message  # noqa: E402
from rtfer.live.server import LiveServer  # noqa: E402


# ----------------------------------------------------------------------------------------------------------- helpers
def _results(n: int, faces: int = 6, seed: int = 0, image: np.ndarray | None = None):
    """Synthetic frames with ``faces`` tracked faces each (random, normalised probabilities)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = rng.random((faces, 7)).astype(np.float32)
        p /= p.sum(axis=1, keepdims=True)
        xyxy = np.array([[20 + 60 * k, 30, 70 + 60 * k, 90] for k in range(faces)], np.float32)
        f = Faces(xyxy, np.zeros((faces, 5, 2), np.float32), np.full(faces, 0.9, np.float32), np.arange(faces))
        yield FrameResult(i, i / 25, "synthetic", f, EmotionScores(p), EmotionScores(p), {"infer": 1.0},
                          image=image, width=640, height=360)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class _WSClient(threading.Thread):
    """A real WebSocket client (aiohttp) collecting every message until the server says bye."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers or {}
        self.messages: list[dict] = []
        self.error: BaseException | None = None
        self.hello = threading.Event()

    def run(self) -> None:
        async def main() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.url, headers=self.headers) as ws:
                    async for msg in ws:
                        m = json.loads(msg.data)
                        self.messages.append(m)
                        if m["type"] == "hello":
                            self.hello.set()
                        if m["type"] == "bye":
                            break

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc
            self.hello.set()


class _SSEClient(threading.Thread):
    """A Server-Sent Events reader (plain urllib)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.messages: list[dict] = []
        self.hello = threading.Event()

    def run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            for line in response:
                if line.startswith(b"data: "):
                    m = json.loads(line[6:])
                    self.messages.append(m)
                    if m["type"] == "hello":
                        self.hello.set()
                    if m["type"] == "bye":
                        return


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _pipeline(bundle):
    from rtfer.pipeline import AnalyzeOptions, Pipeline

    return Pipeline(AnalyzeOptions(bundle=str(bundle), backend="onnxruntime", device="cpu"))


def _run(pipeline, video, csv_path, sinks, cancel=None):
    from rtfer.run import OutputPlan, Run

    return Run(pipeline, str(video), plan=OutputPlan(str(video), csv=str(csv_path)), sinks=sinks,
               cancel=cancel).execute()


def _check_face(face: dict, row: dict) -> None:
    assert face["box"] == [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
    assert face["det_score"] == float(row["det_score"])
    assert face["probs"] == {c: float(row[c]) for c in CLASSES}
    for key in ("confidence", "valence"):
        assert face[key] == float(row[key])
    for key in ("emotion", "sentiment5", "sentiment3"):
        assert face[key] == row[key]


# ------------------------------------------------------------------------------------------------ options and access
def test_serve_addresses_and_the_token_rule():
    assert parse_address("8765") == ("127.0.0.1", 8765)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    for bad in ("http", "::1:80", "host:70000"):
        with pytest.raises(RtferError):
            parse_address(bad)
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    assert check_serve("localhost:0", None) == ("localhost", 0)
    with pytest.raises(RtferError, match="--serve-token"):
        check_serve("0.0.0.0:8765", None)
    assert check_serve("0.0.0.0:8765", "s3cret") == ("0.0.0.0", 8765)


def test_cli_refuses_a_network_address_without_a_token(tmp_path, capsys, group_video, monkeypatch):
    monkeypatch.delenv("RTFER_SERVE_TOKEN", raising=False)
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--serve", "0.0.0.0:0"],
                           capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "needs --serve-token" in err
    assert not (tmp_path / "o.csv").exists()


def test_cli_refuses_live_outputs_in_batch_mode_and_a_port_in_use(tmp_path, capsys, group_video):
    code, _, err = run_cli(["analyze", str(group_video), "--out-dir", str(tmp_path / "out"), "--serve", "0"], capsys)
    assert code == 2 and "not with --out-dir" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--serve", str(port)],
                               capsys)
    assert code == 2 and err.startswith("rtfer: error: --serve cannot listen on 127.0.0.1:") and err.count("\n") == 1


def test_a_missing_live_extra_is_one_line(tmp_path, capsys, group_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "pylsl", None)  # import pylsl now raises ImportError
    code, _, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--lsl"], capsys)
    assert code == 2
    assert err.startswith("rtfer: error: --lsl needs the pylsl package") and "pip install 'rtfer[live]'" in err
    assert err.count("\n") == 1


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_with_a_token_every_request_must_carry_it():
    with LiveServer("127.0.0.1", 0, token="s3cret") as server:
        url = server.url
        for path in ("", "ws", "events", "frame.jpg"):
            status, headers, _ = _get(url + path)
            assert status == 401, path
            assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert _get(url + "?token=wrong")[0] == 401
        assert _get(url, {"Authorization": "Bearer wrong"})[0] == 401
        status, headers, body = _get(url + "?token=s3cret")
        assert status == 200 and b"<title>rtfer live</title>" in body
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert _get(url, {"Authorization": "Bearer s3cret"})[0] == 200
        assert _get(url + "frame.jpg?token=s3cret")[0] == 204  # no frame yet

        refused = _WSClient(url.replace("http", "ws") + "ws")
        refused.start()
        refused.join(10)
        assert isinstance(refused.error, aiohttp.WSServerHandshakeError) and refused.error.status == 401
        accepted = _WSClient(url.replace("http", "ws") + "ws", {"Authorization": "Bearer s3cret"})
        accepted.start()
        assert accepted.hello.wait(10) and accepted.error is None
        by_query = _WSClient(url.replace("http", "ws") + "ws?token=s3cret")
        by_query.start()
        assert by_query.hello.wait(10) and by_query.error is None
    accepted.join(10)
    by_query.join(10)
    assert accepted.messages[-1]["type"] == "bye"


def test_without_a_token_only_loopback_hosts_and_same_origin_feeds():
    with LiveServer("127.0.0.1", 0) as server:
        assert _get(server.url)[0] == 200
        assert _get(server.url, {"Host": f"localhost:{server.bound_port}"})[0] == 200
        assert _get(server.url, {"Host": "attacker.example"})[0] == 403  # DNS rebinding
        assert _get(server.url + "events", {"Origin": "http://attacker.example"})[0] == 403
        cross = _WSClient(server.url.replace("http", "ws") + "ws", {"Origin": "http://attacker.example"})
        cross.start()
        cross.join(10)
        assert isinstance(cross.error, aiohttp.WSServerHandshakeError) and cross.error.status == 403
        same = _WSClient(server.url.replace("http", "ws") + "ws",
                         {"Origin": f"http://127.0.0.1:{server.bound_port}"})
        same.start()
        assert same.hello.wait(10) and same.error is None


# ------------------------------------------------------------------------------------------- real runs, real clients
def test_websocket_and_sse_clients_receive_the_csv_rows(tmp_path, tiny_bundle, group_video):
    pipeline = _pipeline(tiny_bundle)
    with LiveServer("127.0.0.1", 0) as server:
        ws = _WSClient(server.url.replace("http", "ws") + "ws")
        sse = _SSEClient(server.url + "events")
        ws.start()
        sse.start()
        assert ws.hello.wait(10) and sse.hello.wait(10)
        _wait(lambda: len(server.stats()["clients"]) == 2)
        cancel = threading.Event()  # never set: a run that reaches the end of its input is "ok", not "partial"
        stats = _run(pipeline, group_video, tmp_path / "out.csv", [server], cancel)
        assert stats.status == "ok" and not cancel.is_set()
        status, headers, jpeg = _get(server.url + "frame.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    ws.join(10)
    sse.join(10)
    rows = _csv_rows(tmp_path / "out.csv")
    by_key = {(int(r["frame"]), int(r["face_id"])): r for r in rows if r["face_id"] != ""}
    assert len(by_key) > 24  # several faces per frame
    for client in (ws, sse):
        kinds = [m["type"] for m in client.messages]
        assert kinds[0] == "hello" and kinds[1] == "run_start" and kinds[-2:] == ["run_end", "bye"]
        assert client.messages[0]["colors"]["happiness"] == "#009E73"  # rtfer.colors
        frames = [m for m in client.messages if m["type"] == "frame"]
        assert [m["frame"] for m in frames] == sorted({int(r["frame"]) for r in rows})
        assert len(frames) == stats.frames
        seen = set()
        for m in frames:
            assert m["source"] == rows[0]["source"] and m["width"] == 480
            for face in m["faces"]:
                key = (m["frame"], face["face_id"])
                _check_face(face, by_key[key])
                seen.add(key)
        assert seen == set(by_key)
        assert client.messages[-2]["frames"] == stats.frames and client.messages[-2]["status"] == "ok"


def test_lsl_inlet_receives_the_csv_rows_with_capture_timestamps(tmp_path, tiny_bundle, group_video):
    name = f"rtfer-test-{uuid.uuid4().hex[:8]}"
    pipeline = _pipeline(tiny_bundle)
    inlets: dict = {}

    def connect() -> None:  # a recorder that finds the data stream once the run creates it
        found = pylsl.resolve_byprop("name", name, timeout=30)
        inlets["data"] = pylsl.StreamInlet(found[0], max_buflen=60, recover=False)
        inlets["data"].open_stream(timeout=10)

    with LSLSink(name, wait_for_consumers_s=30) as sink:
        markers = pylsl.StreamInlet(pylsl.resolve_byprop("name", name + "-markers", timeout=30)[0])
        markers.open_stream(timeout=10)
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        t_before = pylsl.local_clock()
        stats = _run(pipeline, group_video, tmp_path / "out.csv", [sink])
        t_after = pylsl.local_clock()
        thread.join(30)
        inlet = inlets["data"]
        samples, stamps = [], []
        while len(samples) < sink.samples:
            chunk, ts = inlet.pull_chunk(timeout=5.0)
            assert chunk, f"received {len(samples)} of {sink.samples} samples"
            samples += chunk
            stamps += ts
        events = []
        while len(events) < 2:
            sample, _ = markers.pull_sample(timeout=5.0)
            assert sample is not None
            events.append(json.loads(sample[0]))
        info = inlet.info(timeout=10)
    assert stats.status == "ok" and stats.faces == len(samples) == sink.samples > 24

    # the stream's description: channel labels and units, the bundle
    channels = info.desc().child("channels").child("channel")
    labels, units = [], []
    while not channels.empty():
        labels.append(channels.child_value("label"))
        units.append(channels.child_value("unit"))
        channels = channels.next_sibling()
    assert labels == [c[0] for c in CHANNELS] == ["frame", "time_s", "face_id", "x1", "y1", "x2", "y2", *CLASSES,
                                                  "valence", "confidence"]
    assert units[3] == "pixels" and units[7] == "probability"
    assert info.channel_count() == len(CHANNELS) and info.nominal_srate() == 0 and info.type() == "Emotion"
    rt = info.desc().child("rtfer").child("bundle")
    assert (rt.child_value("name"), rt.child_value("version")) == (pipeline.bundle.spec.name,
                                                                 pipeline.bundle.spec.version)
    assert info.desc().child("acquisition").child_value("manufacturer") == "rtfer"

    # every sample is one CSV row; the frames' timestamps are capture times on the LSL clock
    rows = {(int(r["frame"]), int(r["face_id"])): r for r in _csv_rows(tmp_path / "out.csv") if r["face_id"]}
    assert len(rows) == len(samples)
    frame_stamp: dict[int, float] = {}
    for sample, stamp in zip(samples, stamps):
        row = rows[(int(sample[0]), int(sample[2]))]
        assert sample[1] == float(row["time_s"])
        assert sample[3:7] == [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        assert sample[7:14] == [float(row[c]) for c in CLASSES]
        assert sample[14:] == [float(row["valence"]), float(row["confidence"])]
        assert frame_stamp.setdefault(int(sample[0]), stamp) == stamp  # one timestamp per frame
        assert t_before - 1.0 < stamp < t_after
    ordered = [frame_stamp[k] for k in sorted(frame_stamp)]
    assert ordered == sorted(ordered)
    assert [e["event"] for e in events] == ["run_start", "run_end"]
    assert events[0]["source"] == group_video.name and events[1]["frames"] == stats.frames


def test_lsl_clock_conversion_matches_local_clock():
    with LSLSink(f"rtfer-test-{uuid.uuid4().hex[:8]}") as sink:
        assert abs(sink.lsl_time(time.monotonic()) - pylsl.local_clock()) < 0.005
        assert abs(sink.lsl_time(None) - pylsl.local_clock()) < 0.005


def test_a_client_that_never_reads_neither_stalls_nor_grows_memory():
    """A raw socket completes the WebSocket handshake and never reads: the frames go on at full speed, its queue
    stays bounded (oldest frames dropped) and the server's memory does not grow with the frames it cannot send."""
    n = 2000
    frames = list(_results(n, faces=20))  # ~7 kB per message
    with LiveServer("127.0.0.1", 0, send_timeout_s=60.0) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.bound_port))
        key = base64.b64encode(os.urandom(16)).decode()
        stalled.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.bound_port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        .encode())
        _wait(lambda: len(server.stats()["clients"]) == 1)
        t0 = time.perf_counter()
        for result in frames[: n // 2]:
            server.append(result)
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)  # the server's loop pushes what the socket takes, then the client's queue fills up
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for result in frames[n // 2:]:
                server.append(result)
            _wait(lambda: not server._pending)
            time.sleep(0.5)
            grown = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        totals = server.stats()
        client = totals["clients"][0]
        t_close = time.perf_counter()
    close_s = time.perf_counter() - t_close
    stalled.close()
    message_bytes = sum(len(dumps(frame_message(r, 0))) for r in frames[n // 2:])
    print(f"\n{n // 2} frames appended in {elapsed:.2f} s ({elapsed / (n // 2) * 1e3:.3f} ms each) with a stalled "
          f"client; {n // 2} more: traced memory peak +{grown / 1e6:.2f} MB for ~{message_bytes / 1e6:.1f} MB of "
          f"messages; client sent {client['sent']}, skipped {client['skipped']}, max queued {client['max_queued']}; "
          f"close {close_s:.2f} s")
    assert server.frames == n and server.published == n
    assert client["max_queued"] <= server.client_queue
    # every message (n frames and the hello) was sent, is queued, was dropped (from the client's queue or, when the
    # loop lagged, the hand-off), or is the one whose send is blocked
    assert client["sent"] + client["queued"] + client["skipped"] + totals["handoff_dropped"] in (n, n + 1)
    # it really was stalled: most messages never reached its socket (the rest went into the kernel's buffers). They
    # were dropped from its queue or, when the server's loop lagged behind a loaded CPU, at the hand-off
    assert client["skipped"] + totals["handoff_dropped"] > n / 4 and client["sent"] < n / 2
    assert grown < min(1.5e6, message_bytes / 4)
    assert elapsed / (n // 2) < 0.01  # per frame: the writer thread never waits for the client
    assert close_s < 8


def test_cli_live_outputs_end_to_end(tmp_path, capsys, tiny_bundle, group_video):
    code, out, err = run_cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--serve", "0", "--lsl",
                              f"rtfer-test-{uuid.uuid4().hex[:8]}", *bundle_args(tiny_bundle)], capsys)
    assert code == 0, err
    assert "rtfer: live page at http://127.0.0.1:" in err and "ws://127.0.0.1:" in err
    assert "rtfer: LSL stream 'rtfer-test-" in err
    assert len(_csv_rows(tmp_path / "o.csv")) > 24


def test_open_live_sinks_reads_the_token_from_the_environment(monkeypatch):
    from contextlib import ExitStack

    monkeypatch.setenv("RTFER_SERVE_TOKEN", "from-env")
    with ExitStack() as stack:
        (server,) = open_live_sinks(stack, serve="127.0.0.1:0")
        assert server.token == "from-env"
        assert _get(server.url)[0] == 401 and _get(server.url + "?token=from-env")[0] == 200
    with pytest.raises(RtferError, match="only used with --serve"):
        open_live_sinks(ExitStack(), serve_token="x")


def test_the_live_page_references_nothing_outside_the_server():
    import re
    from importlib import resources

    page = resources.files("rtfer.live").joinpath("page.html").read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href|action)\s*=\s*["']([^"']+)|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""",
                      page)
    assert not [r for group in refs for r in group if r], "the page loads nothing by URL"
    assert not re.search(r"""["'`](?:https?:)?//""", page), "no absolute URL in the page"
    assert "location.host" in page and "/frame.jpg" in page  # everything comes from the serving origin
