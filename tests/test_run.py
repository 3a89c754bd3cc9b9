"""The run layer (rtfer.run): output plans, the writer thread, one annotation per frame, and the app's imports."""
from __future__ import annotations

import ast
import csv
import threading
from pathlib import Path

import numpy as np
import pytest

from rtfer.errors import InputError, OutputError
from rtfer.run import OutputPlan, Recording, Run, SinkWriter, plan_outputs
from rtfer.types import EmotionScores, Faces, Frame, FrameResult

ROOT = Path(__file__).resolve().parents[1]


def _result(i: int, image: np.ndarray | None = None) -> FrameResult:
    probs = np.full((1, 7), 1 / 7, np.float32)
    faces = Faces(np.array([[10, 10, 40, 40]], np.float32), np.zeros((1, 5, 2), np.float32),
                  np.array([0.9], np.float32), np.array([1]))
    return FrameResult(i, i / 10, "clip", faces, EmotionScores(probs), EmotionScores(probs), {"infer": 1.0},
                       image=image, width=64, height=48)


class _ListSource:
    kind, name, fps, frame_count, duration_s, live, warnings = "video", "clip", 10.0, 6, 0.6, False, []

    def __init__(self, n: int = 6) -> None:
        self._frames = iter([Frame(i, i / 10, np.zeros((48, 64, 3), np.uint8), "clip") for i in range(n)])
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self.closed = True


class _Pipeline:
    """Yields one result per frame, recording the thread it ran on."""

    options = None

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def describe(self) -> dict:
        return {"bundle": "fake 0", "backend": "fake", "device": "cpu", "detector": "fake"}

    def run(self, source, cancel=None, keep_images=None):
        for frame in source:
            self.threads.add(threading.current_thread().name)
            yield _result(frame.index, frame.image)


class _Collect:
    def __init__(self, fail_at: int | None = None) -> None:
        self.rows: list[int] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def append(self, result: FrameResult) -> None:
        if self.fail_at is not None and result.index >= self.fail_at:
            raise OutputError("cannot write out.csv: No space left on device")
        self.threads.add(threading.current_thread().name)
        self.rows.append(result.index)


def test_sinks_run_on_the_writer_thread_in_order_and_the_stats_count_every_frame():
    pipe, sink = _Pipeline(), _Collect()
    stats = Run(pipe, _ListSource(6), sinks=[sink]).execute()
    assert sink.rows == list(range(6))
    assert sink.threads == {"rtfer-writer"} and "rtfer-writer" not in pipe.threads
    assert stats.frames == 6 and stats.faces == 6 and stats.status == "ok"
    assert stats.stage_ms["infer"] == pytest.approx(1.0) and "write" in stats.stage_ms


def test_a_failing_sink_ends_the_run_with_its_error_and_the_source_is_closed():
    src = _ListSource(40)
    with pytest.raises(OutputError, match="No space left"):
        Run(_Pipeline(), src, sinks=[_Collect(fail_at=2)], writer_queue=2).execute()
    assert src.closed


def test_writer_queue_is_bounded_so_a_slow_disk_holds_the_producer_back():
    gate = threading.Event()

    class Slow:
        def append(self, result):
            gate.wait(5)

    writer = SinkWriter([Slow()], maxsize=2)
    done = []
    producer = threading.Thread(target=lambda: [writer.submit(_result(i)) or done.append(i) for i in range(10)])
    producer.start()
    producer.join(0.5)
    assert producer.is_alive() and len(done) <= 4, "submit must block while the queue is full"
    gate.set()
    producer.join(5)
    writer.close()
    assert done == list(range(10)) and writer.written == 10


def test_writer_closes_even_when_an_interrupted_put_left_a_stale_waiter():
    """Ctrl-C inside the main thread's Queue.put, between Condition.notify releasing the writer's waiter and removing
    it from the waiter list, leaves that stale waiter first in line: the next notify (close's end marker) releases
    it instead of the writer's new one. The writer must still see the marker (it once slept forever: a hang on
    Ctrl-C, about one run in seven on a loaded machine)."""
    import time

    written = []

    class Sink:
        def append(self, result):
            written.append(result.index)

    writer = SinkWriter([Sink()])
    writer.submit(_result(0))
    deadline = time.monotonic() + 5
    while not (written and writer._q.not_empty._waiters) and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer wrote frame 0 and waits for the next item
    stale = threading.Lock()
    stale.acquire()  # as a waiter the interrupted notify released and its owner re-acquired
    with writer._q.mutex:
        writer._q.not_empty._waiters.appendleft(stale)
    closer = threading.Thread(target=writer.close, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "close() hung: the writer thread never saw the end marker"
    assert written == [0]


def test_max_frames_stops_early_and_cancel_marks_the_run_partial():
    assert Run(_Pipeline(), _ListSource(6), max_frames=3).execute().frames == 3
    cancel = threading.Event()
    run = Run(_Pipeline(), _ListSource(6), cancel=cancel)
    for k, _ in enumerate(run.frames()):
        if k == 1:
            cancel.set()
    assert run.stats.status == "partial" and run.stats.frames == 2


def test_a_frame_is_annotated_once_for_the_display_and_the_recording(monkeypatch, tmp_path):
    """The app shows the annotated frame and records the same image: annotation runs once per frame."""
    import rtfer.annotate

    calls = []
    real = rtfer.annotate.annotate

    def counting(image, result, scale="emotion", **kw):
        calls.append(result.index)
        return real(image, result, scale=scale, **kw)

    monkeypatch.setattr(rtfer.annotate, "annotate", counting)
    rec = Recording()
    rec.start(tmp_path / "r.csv", tmp_path / "r.mp4", fps=10)
    shown = [item.annotated for item in Run(_Pipeline(), _ListSource(5), sinks=[rec], annotate="emotion").frames()]
    assert rec.stop() == [tmp_path / "r.csv", tmp_path / "r.mp4"]
    assert calls == list(range(5)) and all(a is not None for a in shown)
    assert len(list(csv.DictReader(open(tmp_path / "r.csv", newline="")))) == 5
    assert (tmp_path / "r.mp4").stat().st_size > 0


def test_a_recording_write_error_stops_the_recording_not_the_run(tmp_path):
    errors: list[str] = []
    rec = Recording(on_error=errors.append)
    rec.start(tmp_path / "r.csv")
    rec._sinks.append(_Collect(fail_at=3))  # a disk that fills up at frame 3
    stats = Run(_Pipeline(), _ListSource(6), sinks=[rec]).execute()
    assert stats.frames == 6 and stats.status == "ok"
    assert not rec.active and errors and "recording stopped" in errors[0]


def test_plans_give_each_input_its_own_outputs_or_refuse(tmp_path):
    a, b = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    (plan,) = plan_outputs([str(a)], csv=str(tmp_path / "a.csv"), report="")
    assert plan.report == str(tmp_path / "a.html") and plan.keep_images
    with pytest.raises(OutputError, match="would destroy the input"):
        plan_outputs([str(a)], csv=str(a))
    with pytest.raises(OutputError, match="would overwrite the CSV"):
        plan_outputs([str(a)], csv=str(tmp_path / "o.csv"), jsonl=str(tmp_path / "o.csv"))
    with pytest.raises(InputError, match="several inputs would all write"):
        plan_outputs([str(a), str(b)], csv=str(tmp_path / "o.csv"))
    with pytest.raises(OutputError, match="would overwrite"):  # both default to clip.csv
        plan_outputs([str(a), str(b)])
    with pytest.raises(OutputError, match="must end in"):
        plan_outputs([str(a)], csv=str(tmp_path / "ok.csv"), summary_png=str(tmp_path / "s.txt"))
    assert OutputPlan("x.mp4", "x.csv", annotated="v.mp4").outputs() == [("x.csv", "CSV"), ("v.mp4", "annotated video")]


def test_the_app_imports_only_the_run_layer_and_the_core_types_and_labels():
    allowed = {"rtfer.run", "rtfer.types", "rtfer.labels", "rtfer.errors", "rtfer.colors"}
    seen = {}
    for path in sorted((ROOT / "ui").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                own = name == "rtfer.ui" or name.startswith("rtfer.ui.")
                if (name == "rtfer" or name.startswith("rtfer.")) and not own:
                    seen.setdefault(name, path.name)
    assert seen, "the app uses the runtime"
    assert set(seen) <= allowed, {k: v for k, v in seen.items() if k not in allowed}
