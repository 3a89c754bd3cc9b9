"""The Qt-free controller: results arrive on a worker thread, stop/pause/seek work, recording is finalised."""
from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest

from rtfer.types import Frame
from rtfer.ui.controller import Callbacks, Controller, PacedSource, is_live_spec, list_cameras

CSV_COLUMNS = ["source", "frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", "surprise", "fear",
               "disgust", "happiness", "sadness", "anger", "neutral", "emotion", "confidence", "sentiment5",
               "sentiment3", "valence"]


class Recorder:
    """Collects every callback (they arrive on the worker thread)."""

    def __init__(self) -> None:
        self.results = []
        self.errors: list[str] = []
        self.states: list[str] = []
        self.info: list[dict] = []
        self.finished: list[str] = []
        self.done = threading.Event()
        self.threads: set[str] = set()

    def callbacks(self) -> Callbacks:
        def on_result(result, annotated, stats):
            self.threads.add(threading.current_thread().name)
            self.results.append((result, annotated, stats))

        def on_finished(reason):
            self.finished.append(reason)
            self.done.set()

        return Callbacks(on_result=on_result, on_error=self.errors.append, on_state=self.states.append,
                         on_info=self.info.append, on_finished=on_finished)


def test_results_arrive_on_worker_thread(group_video, fake_factory, fake_options):
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(group_video), fake_options)
    assert rec.done.wait(20), "the run did not finish"
    assert rec.finished == ["end"] and not rec.errors
    assert len(rec.results) == 12
    assert rec.threads == {"rtfer-ui-worker"}
    result, annotated, stats = rec.results[-1]
    assert annotated is not None and annotated.shape == result.image.shape
    assert not np.array_equal(annotated, result.image), "the annotated frame should carry boxes and labels"
    assert stats.frames == 12 and stats.faces == 2 and stats.fps > 0
    assert set(stats.latency_ms) >= {"detect", "infer"}
    assert rec.info == [{"backend": "fake", "device": "cpu", "detector": "FakeDetector", "bundle": "fake 0"}]
    assert rec.states[0] == "loading" and "running" in rec.states and rec.states[-1] == "idle"
    series = ctl.timeline.snapshot()
    assert [s.track_id for s in series] == [1, 2] and len(series[0].times) == 12
    # the bundle is loaded once and reused by the next run with the same bundle/backend/device
    bundle = fake_factory.made[0].bundle
    rec.done.clear()
    ctl.start(str(group_video), fake_options)
    assert rec.done.wait(20)
    assert fake_factory.made[1].bundle is bundle


def test_stop_cancels_promptly(group_video, fake_factory, fake_options):
    fake_factory.kwargs = {"delay_s": 0.2}
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(group_video), fake_options)
    deadline = time.monotonic() + 10
    while not rec.results and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    assert ctl.stop()
    assert time.monotonic() - t0 < 2.0
    assert rec.finished == ["stopped"] and ctl.state == "idle" and not ctl.running
    assert 1 <= len(rec.results) < 12


def test_pause_and_resume(group_video, fake_factory, fake_options):
    rec = Recorder()
    callbacks = rec.callbacks()
    record, paused = callbacks.on_result, threading.Event()

    def on_result(result, annotated, stats):  # pause on the worker thread itself: no result can be in flight
        record(result, annotated, stats)
        if len(rec.results) == 3:
            ctl.pause()
            paused.set()

    callbacks.on_result = on_result
    ctl = Controller(callbacks, pipeline_factory=fake_factory)
    ctl.start(str(group_video), fake_options)
    assert paused.wait(20) and ctl.state == "paused"
    time.sleep(0.2)  # a slow machine can only make this check weaker, never fail it
    assert len(rec.results) == 3, "no results while paused"
    ctl.resume()
    assert rec.done.wait(20) and len(rec.results) == 12


def test_recording_writes_valid_csv_and_finalises_on_stop(group_video, fake_factory, fake_options, tmp_path):
    fake_factory.kwargs = {"delay_s": 0.05}
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    out = tmp_path / "timeline.csv"
    ctl.start(str(group_video), fake_options)
    ctl.start_recording(out)
    assert ctl.recording
    while len(rec.results) < 4:
        time.sleep(0.01)
    ctl.stop()
    assert not ctl.recording, "stopping the run must finalise the recording"
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
        fh.seek(0)
        header = next(csv.reader(fh))
    assert header[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert len(rows) >= 2 * 3 and len(rows) % 2 == 0  # two faces per frame, whole frames only
    assert {r["face_id"] for r in rows} == {"1", "2"}
    probs = np.array([[float(r[c]) for c in CSV_COLUMNS[9:16]] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_error_mid_run_is_reported_and_csv_finalised(group_video, fake_factory, fake_options, tmp_path):
    fake_factory.kwargs = {"fail_after": 5}
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    out = tmp_path / "t.csv"
    ctl.start_recording(out)
    ctl.start(str(group_video), fake_options)
    assert rec.done.wait(20)
    assert rec.finished == ["error"]
    assert rec.errors == ["camera 0 stopped delivering frames (simulated)"]
    assert ctl.last_error == rec.errors[0]
    assert not ctl.recording
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == 5 * 2


def test_unreadable_file_and_bundle_failure_are_messages(tmp_path, fake_factory, fake_options):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(bad), fake_options)
    assert rec.done.wait(10)
    assert rec.finished == ["error"] and len(rec.errors) == 1 and "broken.mp4" in rec.errors[0]

    fake_factory.fail = "bundle 'nope' not found"
    rec2 = Recorder()
    ctl2 = Controller(rec2.callbacks(), pipeline_factory=fake_factory)
    ctl2.start(str(bad), fake_options)
    assert rec2.done.wait(10)
    assert rec2.errors == ["bundle 'nope' not found"] and rec2.finished == ["error"]


def test_seek_restarts_at_the_requested_time(group_video, fake_factory, fake_options):
    fake_factory.kwargs = {"delay_s": 0.1}
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(group_video), fake_options)
    while not rec.results:
        time.sleep(0.01)
    assert ctl.seekable and ctl.duration_s == pytest.approx(1.2, abs=0.15)
    ctl.seek(0.8)
    assert rec.done.wait(20) and rec.finished == ["end"]
    pipe = fake_factory.made[0]
    assert pipe.runs == 2
    assert pipe.first_times[1] == pytest.approx(0.8, abs=0.051)
    assert rec.results[-1][0].time_s == pytest.approx(1.1, abs=0.051)


def test_export_summary_needs_results_then_writes_png(group_video, fake_factory, fake_options, tmp_path):
    ctl = Controller(pipeline_factory=fake_factory)
    with pytest.raises(ValueError, match="nothing to summarise"):
        ctl.export_summary(tmp_path / "s.png")
    ctl.start(str(group_video), fake_options)
    assert ctl.wait(20)
    out = ctl.export_summary(tmp_path / "s.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _ListSource:
    """A minimal Source stand-in: frames at 10 fps."""

    kind = "video"

    def __init__(self, n: int) -> None:
        self.frames = iter([Frame(i, i / 10, np.zeros((4, 4, 3), np.uint8), "x") for i in range(n)])
        self.dropped = 0
        self.closed = False

    def __next__(self):
        return next(self.frames)

    def close(self) -> None:
        self.closed = True


def test_paced_source_plays_at_real_time_and_skips_when_behind(fake_clock):
    fake_clock.now = 100.0
    paced = PacedSource(_ListSource(6), threading.Event(), threading.Event(), clock=fake_clock, sleep=fake_clock.sleep)
    released = []
    for frame in paced:
        released.append((frame.time_s, fake_clock.now - 100.0))
    assert [t for t, _ in released] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert [now for _, now in released] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]), "each frame on its time"
    assert paced.dropped == 0

    slow = PacedSource(_ListSource(10), threading.Event(), threading.Event(), clock=fake_clock,
                       sleep=fake_clock.sleep)
    got = []
    for frame in slow:
        got.append(frame.index)
        fake_clock.sleep(0.25)  # a consumer 2.5x slower than real time
    # released at 0, 0.25, 0.5, 0.75 (media 0, 0.2, 0.5, 0.7, rounded to the newest frame within the 0.1 s lag)
    assert got[0] == 0 and slow.dropped >= 5 and len(got) + slow.dropped == 10
    assert all(b > a for a, b in zip(got, got[1:])) and slow.kind == "video"


def test_paced_source_does_not_count_paused_time(fake_clock):
    paused = threading.Event()
    paced = PacedSource(_ListSource(3), paused, threading.Event(), clock=fake_clock, sleep=fake_clock.sleep)
    assert next(paced).index == 0
    paused.set()

    def sleep(seconds):  # the user resumes after 5 s of pause
        fake_clock.sleep(seconds)
        if fake_clock.now >= 5.0:
            paused.clear()

    paced._sleep = sleep
    assert next(paced).index == 1 and next(paced).index == 2 and paced.dropped == 0


def test_live_specs():
    assert is_live_spec(0) and is_live_spec("1") and is_live_spec("rtsp://host/stream")
    assert not is_live_spec("video.mp4") and not is_live_spec(True)


def test_camera_probe_lists_the_indices_that_open_and_releases_each(monkeypatch):
    import sys

    import cv2

    import rtfer.ui.controller as controller

    opened, released = [], []

    class FakeCapture:
        def __init__(self, index):
            self.index = index
            opened.append(index)

        def isOpened(self):
            return self.index in (0, 2)

        def release(self):
            released.append(self.index)

    nodes = {"/dev/video0", "/dev/video1", "/dev/video2"}
    real_exists = controller.os.path.exists
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    monkeypatch.setattr(controller.os.path, "exists", lambda p: p in nodes if str(p).startswith("/dev/video")
                        else real_exists(p))
    assert list_cameras(5) == [0, 2]
    assert released == opened, "every probed capture is released"
    if sys.platform.startswith("linux"):
        assert opened == [0, 1, 2], "an index without a /dev/video node is not opened"


def _run_real(group_video, tmp_path, bundle: str):
    from rtfer.pipeline import AnalyzeOptions

    rec = Recorder()
    ctl = Controller(rec.callbacks())
    out = tmp_path / "real.csv"
    ctl.start_recording(out)
    ctl.start(str(group_video), AnalyzeOptions(bundle=bundle, every=3))
    assert rec.done.wait(120), "the real pipeline did not finish the 12-frame video"
    assert rec.finished == ["end"] and not rec.errors, rec.errors
    assert len(rec.results) == 12
    assert max(len(r.faces) for r, _a, _s in rec.results) >= 4, "the group photo has six faces"
    assert rec.info and rec.info[0]["backend"] and rec.info[0]["device"]
    assert rec.threads == {"rtfer-ui-worker"}
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) >= 12 * 4 and rows[0]["emotion"]
    return rec


def test_real_pipeline_with_tiny_bundle(group_video, tmp_path, tiny_bundle):
    """The real Pipeline (detector, tracker, ONNX Runtime, smoother) with a random-weight two-member bundle."""
    _run_real(group_video, tmp_path, str(tiny_bundle))


def test_real_pipeline_with_default_bundle(group_video, tmp_path):
    """The shipped default bundle (skips while training has not produced it)."""
    import rtfer
    from rtfer.errors import BundleError

    try:
        rtfer.load_bundle("default")
    except BundleError as exc:
        pytest.skip(f"default bundle not available yet: {exc}")
    _run_real(group_video, tmp_path, "default")


def test_recording_annotated_video(group_video, fake_factory, fake_options, tmp_path):
    from rtfer.capture import open_source

    ctl = Controller(pipeline_factory=fake_factory)
    ctl.start_recording(tmp_path / "t.csv", tmp_path / "t.mp4")
    ctl.start(str(group_video), fake_options)
    assert ctl.wait(20) and ctl.last_error is None and not ctl.recording
    with open_source(tmp_path / "t.mp4") as src:
        frames = list(src)
    assert len(frames) == 12 and frames[0].image.shape == (442, 640, 3)


def test_image_folder_in_real_time_mode_is_not_paced(group_photo, fake_factory, fake_options, tmp_path):
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"img{i}.jpg"), cv2.resize(group_photo, (320, 221)))
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(folder), fake_options, realtime=True)
    assert rec.done.wait(10) and rec.finished == ["end"]
    assert [r.source for r, _a, _s in rec.results] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert rec.results[-1][2].dropped == 0 and not ctl.seekable


def test_real_time_playback_drops_frames_instead_of_falling_behind(group_video, fake_factory, fake_options,
                                                                   fake_clock):
    fake_factory.kwargs = {"delay_s": 0.25, "sleep": fake_clock.sleep}  # 4 frames/s against a 10 frames/s video
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory, clock=fake_clock, sleep=fake_clock.sleep)
    ctl.start(str(group_video), fake_options, realtime=True)
    assert rec.done.wait(20) and rec.finished == ["end"]
    stats = rec.results[-1][2]
    shown = [r.time_s for r, _a, _s in rec.results]
    assert shown == sorted(shown) and shown[0] == 0.0
    # every frame up to the last one shown was shown or skipped; frames skipped after it are not in its stats
    assert stats.dropped >= 4 and len(shown) + stats.dropped == round(shown[-1] * 10) + 1
    assert shown[-1] >= 1.1 - 0.25 - 0.1, "the tail of the video was skipped, not played late"
    # playback time: the 1.2 s video plus at most one frame's processing, however slow the machine really is
    assert fake_clock.now <= 1.2 + 0.25 + 1e-6, f"fell behind: {fake_clock.now:.2f} s for a 1.2 s video"


def test_restart_while_loading_ignores_the_stale_worker(group_video, fake_factory, fake_options, tmp_path):
    fake_factory.load_delays = [1.0, 0.0]  # the first pipeline is still 'loading' when the user picks again
    rec = Recorder()
    ctl = Controller(rec.callbacks(), pipeline_factory=fake_factory)
    ctl.start(str(group_video), fake_options)
    stale = ctl._run.thread
    t0 = time.monotonic()
    ctl.start(str(group_video), fake_options, stop_timeout=0.1)
    assert time.monotonic() - t0 < 0.5, "start must not wait for a bundle that is loading"
    ctl.start_recording(tmp_path / "r.csv")
    assert rec.done.wait(10) and rec.finished == ["end"]
    stale.join(10)  # the stale worker finishes loading, sees its stop event and ends silently
    assert not stale.is_alive()
    assert rec.finished == ["end"] and not rec.errors and len(rec.results) == 12
    assert sorted(p.runs for p in fake_factory.made) == [0, 1]  # the stale pipeline never ran
    assert ctl.state == "idle" and not ctl.recording


def test_camera_sources_open_in_drop_frames_mode(monkeypatch, group_video, fake_factory, fake_options):
    """A webcam index opens latest-frame-wins (no camera here: index 0 is served by the group video)."""
    import rtfer.capture

    real_open = rtfer.capture.open_source
    calls = []

    def open_source(spec, **kwargs):
        calls.append((spec, kwargs))
        return real_open(str(group_video) if spec == 0 else spec, **kwargs)

    monkeypatch.setattr(rtfer.capture, "open_source", open_source)
    ctl = Controller(pipeline_factory=fake_factory)
    ctl.start(0, fake_options, realtime=False)
    assert ctl.wait(10) and ctl.last_error is None
    assert [(spec, kwargs["drop_frames"]) for spec, kwargs in calls] == [(0, True)]
    ctl.start(str(group_video), fake_options)
    assert ctl.wait(10)
    assert (calls[1][0], calls[1][1]["drop_frames"]) == (str(group_video), False)


def test_cached_bundle_is_not_lent_to_a_run_while_a_stale_worker_still_uses_it(group_video, fake_options):
    """A worker whose stop timed out keeps the loaded bundle; a run started meanwhile loads its own copy, and the
    bundle is reused again once that worker has ended (two threads never share one bundle's backends)."""
    gate, entered = threading.Event(), threading.Event()
    given: list = []
    made: list = []

    class StuckPipeline:
        def __init__(self, bundle, stuck):
            self.bundle = bundle if bundle is not None else object()
            self.stuck = stuck

        def describe(self):
            return {}

        def run(self, source, cancel=None):
            if self.stuck:
                entered.set()
                gate.wait(10)  # deep in an inference call, deaf to cancel
            return iter(())

    def factory(options, bundle=None):
        given.append(bundle)
        made.append(StuckPipeline(bundle, stuck=len(given) == 1))
        return made[-1]

    ctl = Controller(pipeline_factory=factory)
    ctl.start(str(group_video), fake_options)
    first = ctl._run.thread
    assert entered.wait(10)
    ctl.start(str(group_video), fake_options, stop_timeout=0.05)  # the first worker does not stop in time
    assert ctl.wait(10) and first.is_alive()
    assert given[1] is None, "the second run must not reuse the bundle the stuck worker is running"
    gate.set()
    first.join(10)
    ctl.start(str(group_video), fake_options)
    assert ctl.wait(10)
    assert given[2] is made[0].bundle, "once the stale worker has ended, the cached bundle is reused"
