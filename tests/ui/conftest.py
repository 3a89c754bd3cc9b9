"""Fixtures for the UI tests: a short video made from the group photo and a fake pipeline.

The fake pipeline has the real ``Pipeline`` interface (``run(source, cancel)``, ``describe()``, ``source``) and
consumes a real :mod:`rtfer.capture` source, so only detection and inference are replaced. It lets the widget and
controller tests run in well under a second per test without a model bundle.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtfer.errors import BundleError, InputError
from rtfer.labels import NUM_CLASSES
from rtfer.types import EmotionScores, Faces, FrameResult

pytest.importorskip("PyQt6")


@pytest.fixture
def qtbot(qtbot, qapp):
    """pytest-qt's ``qtbot``, except that a widget given to ``addWidget`` lives exactly until the end of its test.

    pytest-qt keeps only a weak reference to such a widget and, after the test, closes it and calls ``deleteLater``.
    A parentless window is owned by its Python wrapper: once the test function has returned, a cyclic garbage
    collection can destroy the window from inside the collection, with pyqtgraph's Python slots still attached, and
    the process segfaults ("wrapped C/C++ object of type QGraphicsTextItem has been deleted" in pyqtgraph first).
    Seen in about one full run in twelve, where the collector runs late; in ``tests/ui/test_ui_app.py`` with the
    collector off for two tests and then collecting at every allocation: 5 crashes in 28 runs, none with this
    fixture. A deferred delete also waits for the next event loop, which can be tests later. So the widgets are held
    here and deleted here, right after pytest-qt closed them (its teardown hook closes widgets before fixture
    finalizers run).
    """
    from PyQt6.QtCore import QEvent

    kept = []
    register = qtbot.addWidget

    def add_widget(widget, *, before_close_func=None):
        register(widget, before_close_func=before_close_func)
        kept.append(widget)

    qtbot.addWidget = qtbot.add_widget = add_widget
    yield qtbot
    qapp.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    kept.clear()


@pytest.fixture(scope="session")
def group_video(tmp_path_factory, group_photo) -> Path:
    """12 frames (10 fps, 640x442) of the six-face group photo panning slightly."""
    from media_helpers import write_test_video

    small = cv2.resize(group_photo, (640, 442), interpolation=cv2.INTER_AREA)
    frames = [np.roll(small, 2 * i, axis=1) for i in range(12)]
    return write_test_video(tmp_path_factory.mktemp("video") / "group.mp4", frames, fps=10.0)


def fake_probs(index: int, n: int) -> np.ndarray:
    """Deterministic (n, 7) probabilities that change with the frame index; rows sum to 1."""
    logits = np.stack([np.sin(0.3 * index + np.arange(NUM_CLASSES) + 1.7 * k) for k in range(n)]) * 2.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class FakePipeline:
    """Two 'faces' at fixed relative boxes per frame with deterministic probabilities."""

    def __init__(self, options=None, bundle=None, *, delay_s: float = 0.0, fail_after: int | None = None,
                 faces: int = 2, sleep=time.sleep) -> None:
        self.options = options
        self.bundle = bundle if bundle is not None else object()
        self.delay_s = delay_s
        self.sleep = sleep  # how a frame's delay passes (a FakeClock's sleep for pacing tests)
        self.fail_after = fail_after
        self.faces = faces
        self.source = None
        self.runs = 0
        self.first_times: list[float] = []
        self.threads: set[str] = set()  # where inference ran (never the UI thread)

    def describe(self) -> dict:
        return {"backend": "fake", "device": "cpu", "detector": "FakeDetector", "bundle": "fake 0"}

    def run(self, source, cancel: threading.Event | None = None):
        self.source = source
        self.runs += 1
        keep = getattr(self.options, "keep_images", True)
        try:
            for k, frame in enumerate(source):
                if k == 0:
                    self.first_times.append(frame.time_s)
                if cancel is not None and cancel.is_set():
                    return
                if self.fail_after is not None and k >= self.fail_after:
                    raise InputError("camera 0 stopped delivering frames (simulated)")
                self.threads.add(threading.current_thread().name)
                if self.delay_s:
                    self.sleep(self.delay_s)
                h, w = frame.image.shape[:2]
                n = self.faces
                xyxy = np.array([[w * (0.1 + 0.4 * i), h * 0.2, w * (0.3 + 0.4 * i), h * 0.6] for i in range(n)],
                                np.float32).reshape(n, 4)
                lm = np.repeat(((xyxy[:, None, :2] + xyxy[:, None, 2:]) / 2), 5, axis=1)
                faces = Faces(xyxy, lm, np.full(n, 0.9, np.float32), np.arange(1, n + 1))
                probs = fake_probs(frame.index, n)
                yield FrameResult(frame.index, frame.time_s, frame.source, faces, EmotionScores(probs),
                                  EmotionScores(probs),
                                  {"decode": 1.0, "detect": 5.0, "track": 0.1, "align": 0.5, "infer": 8.0,
                                   "stack": 0.1, "smooth": 0.1},
                                  image=frame.image if keep else None, width=w, height=h)
        finally:
            source.close()


class FakeClock:
    """Time that passes only when someone sleeps: pacing tests give the same answer on a loaded machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, float(seconds))


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_factory():
    """A pipeline factory recording the pipelines it made; ``factory.kwargs`` configures the next ones."""

    class Factory:
        def __init__(self) -> None:
            self.made: list[FakePipeline] = []
            self.kwargs: dict = {}
            self.fail: str | None = None
            self.load_delays: list[float] = []  # seconds each next pipeline takes to 'load'

        def __call__(self, options, bundle=None):
            if self.load_delays:
                time.sleep(self.load_delays.pop(0))
            if self.fail:
                raise BundleError(self.fail)
            pipe = FakePipeline(options, bundle, **self.kwargs)
            self.made.append(pipe)
            return pipe

    return Factory()


@pytest.fixture
def fake_options():
    """Default AnalyzeOptions (the fake pipeline ignores everything but keep_images)."""
    from rtfer.pipeline import AnalyzeOptions

    return AnalyzeOptions(keep_images=True)


@pytest.fixture
def qsettings(tmp_path):
    from PyQt6.QtCore import QSettings

    return QSettings(str(tmp_path / "rtfer-app.ini"), QSettings.Format.IniFormat)
