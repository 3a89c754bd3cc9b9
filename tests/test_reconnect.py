"""Live streams that drop (issue 23): reconnect with backoff, keep appending to the same outputs, mark the gap,
end with a clear message when the stream never returns. Driven by a loopback MJPEG camera (tests/stream_helpers.py)
that is stopped and restarted."""
from __future__ import annotations

import csv
import json
import threading
import time

import pytest

from cli_helpers import bundle_args, run_cli
from stream_helpers import MJPEGServer

PASSWORD = "p@ss:w0rd%40x"  # '@', ':' and a percent-escaped '@'


def _read_all(src, out: list) -> threading.Thread:
    def consume():
        for frame in src:
            out.append(frame)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def test_stream_that_drops_is_reopened_and_times_continue_across_the_gap():
    from rtfer.capture import open_source

    server = MJPEGServer(fps=25).start()
    src = open_source(server.url, drop_frames=False, reconnect_s=20)
    frames: list = []
    thread = _read_all(src, frames)
    try:
        server.wait_served(10)
        server.stop()
        time.sleep(1.0)  # the camera is away for a second
        before = len(frames)
        server.start()
        server.wait_served(20)
        deadline = time.monotonic() + 20
        while len(frames) < before + 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        src.close()
        server.stop()
        thread.join(5)
    assert len(src.gaps) == 1
    gap = src.gaps[0]
    assert gap.resume_index == before and gap.start_s == pytest.approx(frames[before - 1].time_s)
    assert gap.end_s == pytest.approx(frames[before].time_s) and gap.duration_s >= 0.9  # the time away is in time_s
    assert [f.index for f in frames] == list(range(len(frames)))
    times = [f.time_s for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert src.lost is None


def test_stream_that_never_returns_ends_with_a_message_within_the_window():
    from rtfer.capture import open_source

    server = MJPEGServer(fps=25).start()
    src = open_source(server.url, drop_frames=False, reconnect_s=1.5)
    frames: list = []
    thread = _read_all(src, frames)
    server.wait_served(5)
    server.stop()
    t0 = time.monotonic()
    thread.join(20)
    assert not thread.is_alive()
    assert 1.4 < time.monotonic() - t0 < 10
    assert src.lost and "did not come back within 1.5 s" in src.lost and "Connection refused" in src.lost
    assert len(src.gaps) == 1 and src.gaps[0].end_s is None
    src.close()


def test_reconnect_zero_ends_when_the_stream_ends():
    from rtfer.capture import open_source

    server = MJPEGServer(fps=25).start()
    src = open_source(server.url, drop_frames=False, reconnect_s=0)
    frames: list = []
    thread = _read_all(src, frames)
    server.wait_served(5)
    server.stop()
    thread.join(15)
    assert not thread.is_alive() and src.gaps == [] and src.lost is None
    assert any("stream stopped after" in w for w in src.warnings)
    src.close()


def test_cli_marks_gaps_appends_after_reconnect_and_never_leaks_the_password(tmp_path, capsys, caplog, tiny_bundle):
    """The whole path: a camera with a password holding '@', ':' and '%40' drops, comes back, drops for good. One
    CSV, JSONL and HTML report get the frames before and after, a gap row each time, and exit 2 with one line."""
    server = MJPEGServer(fps=25).start()
    url = server.url.replace("http://", f"http://alice:{PASSWORD}@")
    out = {k: tmp_path / f"cam.{k}" for k in ("csv", "jsonl", "html")}
    done = threading.Event()

    def camera():  # the camera's life, in another thread: the CLI runs in the main thread (signal handlers)
        try:
            server.wait_served(25)
            server.stop()
            time.sleep(1.0)
            server.start()
            server.wait_served(server.served + 25)
        finally:
            server.stop()
            done.set()

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    try:
        result = {"cli": run_cli(["analyze", url, "-o", str(out["csv"]), "--jsonl", str(out["jsonl"]), "--report",
                                  str(out["html"]), "--reconnect", "3", *bundle_args(tiny_bundle)], capsys)}
    finally:
        server.stop()
        thread.join(10)
    assert done.is_set()
    code, stdout, stderr = result["cli"]
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("rtfer: error:")]
    assert len(errors) == 1 and "did not come back within 3 s" in errors[0] and "frames analysed before" in errors[0]
    rows = list(csv.DictReader(out["csv"].open()))
    gaps = [i for i, r in enumerate(rows) if r["frame"] == ""]
    assert len(gaps) == 2 and gaps[-1] == len(rows) - 1  # one gap came back, the last one did not
    first_gap = rows[gaps[0]]
    assert 0 < gaps[0] < gaps[1] - 1 and all(first_gap[c] == "" for c in ("face_id", "emotion", "valence"))
    assert float(first_gap["time_s"]) == pytest.approx(float(rows[gaps[0] - 1]["time_s"]))
    assert float(rows[gaps[0] + 1]["time_s"]) - float(first_gap["time_s"]) >= 0.9  # the time away
    frames = [int(r["frame"]) for r in rows if r["frame"]]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    times = [float(r["time_s"]) for r in rows]
    assert all(b >= a for a, b in zip(times, times[1:]))
    records = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    marks = [r["gap"] for r in records if "gap" in r]
    assert len(marks) == 2 and marks[0]["end_s"] > marks[0]["start_s"] and marks[1]["end_s"] is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "reconnecting for up to 3 s" in logged and "the stream is back after" in logged
    texts = {"stdout": stdout, "stderr": stderr, "log": logged, **{k: p.read_text() for k, p in out.items()}}
    for where, text in texts.items():
        for secret in ("alice", PASSWORD, "w0rd", "%40x", "p@ss"):
            assert secret not in text, f"{secret!r} leaked into {where}"
    assert "http://***@127.0.0.1" in rows[0]["source"]


def test_reconnect_must_not_be_negative(tmp_path, capsys):
    code, _, err = run_cli(["analyze", "rtsp://127.0.0.1:9/x", "-o", str(tmp_path / "x.csv"), "--reconnect", "-1"],
                           capsys)
    assert code == 2 and "--reconnect must be >= 0" in err
