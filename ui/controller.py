"""Qt-free controller: a client of the run layer (:mod:`rtfer.run`) on a worker thread, reporting through callbacks.

The UI (or a test) calls :meth:`Controller.start`, :meth:`pause`, :meth:`seek`, :meth:`stop`,
:meth:`start_recording` / :meth:`stop_recording` and :meth:`export_summary` from its own thread; the worker
thread loads the bundle, opens the source (the run layer's policy: live sources drop frames, ``realtime`` paces
files), runs a :class:`rtfer.run.Run` and calls the callbacks (``on_result``, ``on_error``, ``on_progress``,
``on_info``, ``on_state``, ``on_finished``) *from the worker thread*. The run annotates each frame once, for the
display and the recorded video, and writes the recording and the summary on its writer thread. Cancel is
cooperative. Whatever stops a run (end of input, stop, error) closes the recording, so the CSV on disk is always
complete up to the last processed frame.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtfer.errors import RtferError
from rtfer.run import (
    PacedSource,
    Pacing,
    Recording,
    Run,
    SharedSummary,
    is_live_spec,
    list_cameras,
    open_input,
    write_summary,
)
from rtfer.types import FrameResult
from rtfer.ui.timeline_model import TimelineBuffer

__all__ = ["Callbacks", "Controller", "LiveStats", "PacedSource", "is_live_spec", "list_cameras"]

log = logging.getLogger(__name__)


@dataclass
class LiveStats:
    """What the status bar shows: throughput, smoothed per-stage latency and dropped frames."""

    frames: int = 0
    fps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    dropped: int = 0
    position_s: float = 0.0
    duration_s: float | None = None
    faces: int = 0


@dataclass
class Callbacks:
    """Functions the worker thread calls; each defaults to doing nothing."""

    on_result: Callable[[FrameResult, Any, LiveStats], None] = lambda result, annotated, stats: None
    on_error: Callable[[str], None] = lambda message: None
    on_progress: Callable[[float, float | None], None] = lambda position_s, duration_s: None
    on_info: Callable[[dict], None] = lambda info: None
    on_state: Callable[[str], None] = lambda state: None
    on_finished: Callable[[str], None] = lambda reason: None


class _Stats:
    """Running fps over a sliding window and exponential moving averages of stage timings."""

    def __init__(self, window: int = 30, alpha: float = 0.2) -> None:
        self._arrivals: deque[float] = deque(maxlen=window)
        self._alpha = alpha
        self.stats = LiveStats()

    def update(self, result: FrameResult, dropped: int, duration_s: float | None) -> LiveStats:
        now = time.monotonic()
        self._arrivals.append(now)
        s = self.stats
        s.frames += 1
        if len(self._arrivals) >= 2 and self._arrivals[-1] > self._arrivals[0]:
            s.fps = (len(self._arrivals) - 1) / (self._arrivals[-1] - self._arrivals[0])
        for key, value in result.timings_ms.items():
            old = s.latency_ms.get(key)
            s.latency_ms[key] = float(value) if old is None else (1 - self._alpha) * old + self._alpha * float(value)
        s.dropped = dropped
        s.position_s = float(result.time_s)
        s.duration_s = duration_s
        s.faces = len(result.faces)
        return dataclasses.replace(s, latency_ms=dict(s.latency_ms))


def _default_pipeline_factory(options: Any, bundle: Any = None) -> Any:
    from rtfer.run import Pipeline

    return Pipeline(options, bundle=bundle)


@dataclass
class _Run:
    """The state of one :meth:`Controller.start`: its worker thread and its own events.

    Each run has its own events, so a worker that is slow to stop (a bundle still loading) can never be revived by
    the next start, and its late callbacks are dropped because it is no longer the current run.
    """

    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event | None = None  # the cancel event of the pipeline.run in progress
    seek_to: float | None = None


class Controller:
    """Runs one source at a time through a pipeline on a worker thread (see the module docstring)."""

    def __init__(self, callbacks: Callbacks | None = None, *,
                 pipeline_factory: Callable[..., Any] | None = None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        """``clock``/``sleep`` pace real-time playback (see :class:`PacedSource`; tests pass a fake clock)."""
        self.callbacks = callbacks or Callbacks()
        self._clock, self._sleep = clock, sleep
        self._factory = pipeline_factory or _default_pipeline_factory
        # The last loaded bundle, reused by the next run with the same bundle/backend/device. Its backends must not
        # be entered from two threads, so it is lent to one run at a time: a run whose stop timed out keeps it until
        # its worker ends, and a run started meanwhile loads its own copy.
        self._bundle_cache: tuple[tuple, Any] | None = None
        self._bundle_user: _Run | None = None
        self._cache_lock = threading.Lock()
        self.timeline = TimelineBuffer()
        self.scale = "emotion"  # annotation label: emotion | sentiment5 | sentiment3
        self._summary = SharedSummary()  # everything processed since start (bounded memory), seeks included
        self._source_name = ""
        self._run: _Run | None = None
        self._lock = threading.Lock()
        self._recording = Recording(on_error=lambda message: self._report(self._run, message))
        self.live_sinks: list[Any] = []  # --lsl / --serve (rtfer.live): sinks of every run, opened by the app
        self._source_fps: float | None = None
        self._source_kind: str | None = None
        self._duration_s: float | None = None
        self._state = "idle"
        self.info: dict = {}
        self.last_error: str | None = None

    # -- state ----------------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """idle | loading | running | paused."""
        return self._state

    def _emit(self, run: _Run, name: str, *args: Any) -> bool:
        """Call a callback for ``run`` unless a newer run has replaced it; True when it was called."""
        if run is not self._run:
            return False
        if name == "on_state":
            self._state = args[0]
        getattr(self.callbacks, name)(*args)
        return True

    @property
    def running(self) -> bool:
        run = self._run
        return run is not None and run.thread is not None and run.thread.is_alive()

    @property
    def source_kind(self) -> str | None:
        return self._source_kind

    @property
    def duration_s(self) -> float | None:
        return self._duration_s

    @property
    def seekable(self) -> bool:
        return self._source_kind == "video" and bool(self._duration_s)

    @property
    def recording(self) -> bool:
        return self._recording.active

    @property
    def paused(self) -> bool:
        run = self._run
        return run is not None and run.paused.is_set()

    # -- control (any thread but the worker) ------------------------------------------------------------------------
    def start(self, source: Any, options: Any, *, realtime: bool = False, stop_timeout: float = 5.0) -> None:
        """Process ``source`` (camera index, video, image, folder or URL) with ``options`` (AnalyzeOptions).

        ``realtime`` paces files at their own frame rate, skipping frames when processing is slower; live sources
        always drop frames instead of falling behind. A running source is stopped first (waiting at most
        ``stop_timeout``; a worker still busy after that ends on its own and is ignored).
        """
        self.stop(timeout=stop_timeout)
        self.last_error = None
        self.timeline.clear()
        self._summary = SharedSummary()
        if dataclasses.is_dataclass(options):
            fields = {f.name for f in dataclasses.fields(options)}
            wanted = {"keep_images": True}
            if realtime:
                wanted["batch_frames"] = 1  # paced playback: show each frame as soon as it is done
            changes = {k: v for k, v in wanted.items() if k in fields}
            options = dataclasses.replace(options, **changes)
        run = _Run()
        run.thread = threading.Thread(target=self._work, args=(run, source, options, realtime),
                                      name="rtfer-ui-worker", daemon=True)
        with self._lock:
            self._run = run
        self._emit(run, "on_state", "loading")
        run.thread.start()

    def pause(self) -> None:
        run = self._run
        if self.running and not run.paused.is_set():
            run.paused.set()
            self._emit(run, "on_state", "paused")

    def resume(self) -> None:
        run = self._run
        if run is not None and run.paused.is_set():
            run.paused.clear()
            if self.running:
                self._emit(run, "on_state", "running")

    def seek(self, time_s: float) -> None:
        """Jump to ``time_s`` in a video file (restarts the pipeline there; tracks start afresh)."""
        run = self._run
        if not self.running or not self.seekable:
            return
        with self._lock:
            run.seek_to = max(0.0, float(time_s))
            if run.cancel is not None:
                run.cancel.set()

    def stop(self, timeout: float = 15.0) -> bool:
        """Cancel the run and wait up to ``timeout`` for its worker; True when it has ended (recording closed)."""
        run = self._run
        if run is None or run.thread is None:
            return True
        run.stop.set()
        run.paused.clear()
        with self._lock:
            if run.cancel is not None:
                run.cancel.set()
        if run.thread is threading.current_thread():
            return False
        run.thread.join(timeout)
        if run.thread.is_alive():
            log.warning("the worker is still busy after %.1f s (loading?); it will end on its own", timeout)
            return False
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (end of input, stop or error); True when it has."""
        run = self._run
        if run is None or run.thread is None:
            return True
        run.thread.join(timeout)
        return not run.thread.is_alive()

    # -- recording --------------------------------------------------------------------------------------------------
    def start_recording(self, csv_path: str | os.PathLike, video_path: str | os.PathLike | None = None, *,
                        raw: bool = False) -> None:
        """Start writing the CSV timeline (and optionally the annotated video) from the next frame on.

        Raises :class:`OutputError` when a file cannot be created.
        """
        self._recording.start(csv_path, video_path, raw=raw, fps=self._source_fps)

    def stop_recording(self) -> list[Path]:
        """Close (finalise) the recording files; returns their paths (empty when nothing was recording)."""
        return self._recording.stop()

    def export_summary(self, png_path: str | os.PathLike) -> Path:
        """Write the summary PNG of everything processed since :meth:`start` (raises OutputError/ValueError).

        The run keeps adding to the summary on its writer thread; a copy taken under its lock is rendered, so export
        never blocks the analysis for longer than the copy.
        """
        acc = self._summary.snapshot()
        if acc.frames == 0:
            raise ValueError("nothing to summarise yet: process a source first")
        return write_summary(acc, png_path,
                             title=f"rtfer summary: {self._source_name}" if self._source_name else None)

    # -- worker -----------------------------------------------------------------------------------------------------
    def _make_pipeline(self, run: _Run, options: Any) -> Any:
        key = tuple(getattr(options, name, None) for name in ("bundle", "backend", "device"))
        with self._cache_lock:
            cached = None
            if self._bundle_cache and self._bundle_cache[0] == key:
                if self._bundle_user in (None, run):
                    cached, self._bundle_user = self._bundle_cache[1], run
                else:
                    log.info("the previous run is still using the loaded model; loading another copy")
        pipeline = self._factory(options, bundle=cached)
        bundle = getattr(pipeline, "bundle", None)
        with self._cache_lock:
            if bundle is not None and self._bundle_user in (None, run):
                self._bundle_cache, self._bundle_user = (key, bundle), run
        return pipeline

    def _release_bundle(self, run: _Run) -> None:
        """``run``'s worker has ended: the cached bundle may be lent to the next run."""
        with self._cache_lock:
            if self._bundle_user is run:
                self._bundle_user = None

    def _open(self, run: _Run, spec: Any, realtime: bool, seek_s: float | None) -> Any:
        pacing = Pacing(run.paused, run.stop, clock=self._clock, sleep=self._sleep) if realtime else None
        source = open_input(spec, seek_s=seek_s, pacing=pacing)
        if run is self._run:
            self._source_kind = source.kind
            # image folders have no time axis: the timeline shows one entry per image instead of tracks over time
            self.timeline.set_mode("images" if source.kind in ("image", "folder") else "time")
            self._source_name = str(getattr(source, "name", "") or "")
            self._source_fps = source.fps
            self._duration_s = source.duration_s
        return source

    def _work(self, run: _Run, spec: Any, options: Any, realtime: bool) -> None:
        reason = "error"
        source = None
        stats = _Stats()
        try:
            pipeline = self._make_pipeline(run, options)
            describe = getattr(pipeline, "describe", None)
            info = dict(describe()) if callable(describe) else {}
            if run is self._run:
                self.info = info
            self._emit(run, "on_info", dict(info))
            seek_s: float | None = None
            while True:
                source = self._open(run, spec, realtime, seek_s)
                if run.stop.is_set():
                    reason = "stopped"
                    break
                self._emit(run, "on_state", "paused" if run.paused.is_set() else "running")
                cancel = threading.Event()
                with self._lock:
                    run.cancel = cancel
                    if run.stop.is_set():
                        cancel.set()
                sinks = [self._recording, self._summary, *self.live_sinks]
                self._consume(run, Run(pipeline, source, sinks=sinks, cancel=cancel,
                                       paused=run.paused, annotate=lambda: self.scale), source, cancel, stats)
                source.close()
                source = None
                with self._lock:
                    seek_s, run.seek_to = run.seek_to, None
                    run.cancel = None
                if run.stop.is_set():
                    reason = "stopped"
                    break
                if seek_s is None:
                    reason = "end"
                    break
                if run is self._run:
                    self.timeline.clear()
                log.info("seeking to %.2f s", seek_s)
        except RtferError as exc:
            self._report(run, str(exc))
        except Exception as exc:  # noqa: BLE001 - the UI must never crash; show the message and log the trace
            log.exception("processing failed")
            self._report(run, f"processing failed: {type(exc).__name__}: {exc}")
        finally:
            if source is not None:
                try:
                    source.close()
                except Exception:  # noqa: BLE001
                    log.debug("closing the source failed", exc_info=True)
            self._release_bundle(run)
            if run is self._run:  # a stale run must not close the recording of the run that replaced it
                try:
                    self.stop_recording()
                except RtferError as exc:
                    self._report(run, str(exc))
            self._emit(run, "on_state", "idle")
            self._emit(run, "on_finished", reason)

    def _report(self, run: _Run, message: str) -> None:
        log.info("reported to the user: %s", message)  # shown through on_error; no duplicate on stderr
        if run is self._run:
            self.last_error = message
        self._emit(run, "on_error", message)

    def _consume(self, run: _Run, job: Run, source: Any, cancel: threading.Event, stats: _Stats) -> None:
        frames = job.frames()
        try:
            for result, annotated in frames:
                if cancel.is_set() or run is not self._run:
                    break
                self.timeline.append(result)
                snapshot = stats.update(result, int(getattr(source, "dropped", 0) or 0), self._duration_s)
                self._emit(run, "on_result", result, annotated, snapshot)
                self._emit(run, "on_progress", float(result.time_s), self._duration_s)
        finally:
            frames.close()  # stops the pipeline's threads when we left the loop early; writes what is queued
