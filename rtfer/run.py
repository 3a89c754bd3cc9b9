"""The run layer: the one way an input goes through a :class:`~rtfer.pipeline.Pipeline` into its outputs.

``rtfer analyze`` (one input or several), ``rtfer bench``, batch mode (per video, through
:func:`process_file`) and the desktop app are thin clients of this module. It owns:

- the **source policy** (:func:`open_input`): live vs file, prefetch, frame dropping, seeking and real-time pacing;
- the **output plan** (:func:`plan_outputs`): one :class:`OutputPlan` per input, checked before anything is opened
  for writing, so no output overwrites an input or another output of the same run;
- the **sinks on a writer thread** (:class:`SinkWriter`), fed by a bounded queue, so CSV writing, annotation and video
  encoding never run on the inference thread and a slow disk holds the pipeline back instead of filling memory;
- the **timings and the summary** of a run (:class:`Run` → :class:`~rtfer.pipeline.RunStats`).

The path of one frame: the source's reader thread decodes it → the pipeline's front thread detects, tracks and aligns
→ the consumer thread (the caller of :meth:`Run.frames`) classifies, stacks and smooths it, annotates it once when the
app shows it, and hands it to the writer → the writer thread appends it to every sink (timeline, video, summary,
report) and adds its stage timings to the run's totals.

The app imports only this module and the core types and labels: the names it needs from elsewhere in the runtime are
re-exported here.
"""
from __future__ import annotations

import copy
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rtfer.backends import BACKENDS
from rtfer.capture import VIDEO_EXTENSIONS, is_live_spec
from rtfer.errors import InputError, OutputError, RtferError, RunInterrupted, redact_url
from rtfer.live import add_arguments as add_live_arguments  # the app's --lsl/--serve options (no live extra needed)
from rtfer.live import open_live_sinks
from rtfer.pipeline import STAGES, AnalyzeOptions, Pipeline, RunStats, StageTimer
from rtfer.sinks import SummaryAccumulator, write_summary_png
from rtfer.types import Frame, FrameResult, StreamGap

log = logging.getLogger(__name__)

SUMMARY_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
REPORT_FORMATS = (".html", ".htm")
WRITER_QUEUE = 16  # frames between the consumer and the writer thread (kept images included: bounded memory)


# ---------------------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Pacing:
    """Real-time playback of a file: frames are released at their timestamps (see :class:`PacedSource`)."""

    paused: threading.Event
    cancel: threading.Event
    clock: Callable[[], float] | None = None
    sleep: Callable[[float], Any] | None = None


def open_input(spec: Any, *, prefetch: int = 8, drop_frames: bool | None = None, seek_s: float | None = None,
               pacing: Pacing | None = None, reconnect_s: float | None = None):
    """Open ``spec`` (file, folder, image, camera index or URL) under the run layer's source policy.

    ``drop_frames`` None: cameras and live streams drop frames (latest frame wins), files, local or served over http,
    never do. ``seek_s`` starts a video file there; ``pacing`` plays a video file at its own frame rate, skipping the
    frames whose time has passed (folders and images have no timeline to pace against). ``reconnect_s``: how long a
    live stream that drops is retried (None = 60 s, 0 = never; its gaps reach the timeline sinks, see :class:`Run`).
    """
    from rtfer.capture import open_source

    if drop_frames is None and not str(spec).lower().startswith(("http://", "https://")):
        drop_frames = is_live_spec(spec)  # an http URL may be a recorded file: open_source probes it
    source = open_source(spec, prefetch=prefetch, drop_frames=drop_frames, reconnect_s=reconnect_s)
    try:
        if seek_s is not None and source.kind == "video":
            source.seek(seek_s)
    except BaseException:
        source.close()
        raise
    if pacing is not None and source.kind == "video":
        return PacedSource(source, pacing.paused, pacing.cancel, clock=pacing.clock, sleep=pacing.sleep)
    return source


def check_input(spec: Any) -> None:
    """Raise the one-line :class:`~rtfer.errors.RtferError` that opening ``spec`` gives, or nothing."""
    open_input(spec, prefetch=0).close()


class PacedSource:
    """Wraps a file :class:`rtfer.capture.Source` to play at real time.

    Frames are released when the wall clock reaches their timestamp; a frame whose time has already passed (the
    pipeline is slower than real time) is skipped and counted in :attr:`dropped`, the file equivalent of
    latest-frame-wins. Time spent paused does not count. ``clock`` and ``sleep`` (default: the monotonic clock and a
    wait that a cancel interrupts) can be replaced by a fake clock, so pacing is tested without real time.
    """

    def __init__(self, inner: Any, paused: threading.Event, cancel: threading.Event, lag_s: float = 0.1, *,
                 clock: Callable[[], float] | None = None, sleep: Callable[[float], Any] | None = None) -> None:
        self._inner = inner
        self._paused = paused
        self._cancel = cancel
        self._lag_s = lag_s
        self._clock = clock or time.monotonic
        self._sleep = sleep or cancel.wait
        self._t0: float | None = None  # wall clock that corresponds to media time 0 (shifted by pauses)
        self._skipped = 0

    def __getattr__(self, name: str) -> Any:  # kind, name, fps, frame_count, duration_s, width, height, warnings
        return getattr(self._inner, name)

    @property
    def dropped(self) -> int:
        return self._skipped + int(getattr(self._inner, "dropped", 0) or 0)

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        while True:
            frame = next(self._inner)
            if self._paused.is_set():
                started = self._clock()
                while self._paused.is_set() and not self._cancel.is_set():
                    self._sleep(0.02)
                if self._t0 is not None:
                    self._t0 += self._clock() - started
            now = self._clock()
            if self._t0 is None:
                self._t0 = now - frame.time_s
            due = self._t0 + frame.time_s
            if now - due > self._lag_s:
                self._skipped += 1
                continue
            if due > now:
                self._sleep(due - now)
            frame.captured = time.monotonic()  # released now: live outputs time-stamp it here, not at decode
            return frame

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> PacedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bundle_combiners(bundle: str) -> tuple[str, ...]:
    """The combiner names a bundle carries ("default" first, then its bundle.json ``combiners``); ("default",) when
    the bundle cannot be read (running it reports why)."""
    from rtfer.bundle import BundleSpec, resolve_bundle_path

    try:
        return ("default", *BundleSpec.read(resolve_bundle_path(bundle or "default")).combiners)
    except (RtferError, OSError):
        return ("default",)


def list_cameras(max_index: int = 6) -> list[int]:
    """Indices of the cameras OpenCV can open, probing ``0 .. max_index - 1``.

    On Linux an index without a ``/dev/videoN`` node is skipped without opening anything, which keeps the probe
    instant on machines without cameras.
    """
    import os

    import cv2

    found = []
    for index in range(max_index):
        if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}"):
            continue
        cap = cv2.VideoCapture(index)
        try:
            if cap is not None and cap.isOpened():
                found.append(index)
        finally:
            if cap is not None:
                cap.release()
    log.info("cameras found: %s", found)
    return found


# ------------------------------------------------------------------------------------------------------ output plan
@dataclass
class OutputPlan:
    """Where one input's outputs go. Paths are as the user gave them; None = not written."""

    input: str
    csv: str | None = None
    jsonl: str | None = None
    annotated: str | None = None
    summary_png: str | None = None
    report: str | None = None
    raw: bool = False
    annotated_width: int | None = None  # None: the source's width, capped (AnnotatedVideoSink)

    def outputs(self) -> list[tuple[str, str]]:
        """``(path, what)`` for every output this input writes."""
        named = (("CSV", self.csv), ("JSON Lines", self.jsonl), ("annotated video", self.annotated),
                 ("summary plot", self.summary_png), ("HTML report", self.report))
        return [(str(path), what) for what, path in named if path]

    @property
    def keep_images(self) -> bool:
        """The annotated video and the report need each frame's image."""
        return self.annotated is not None or self.report is not None

    def open_sinks(self, stack: ExitStack, source, pipeline, *, command: str | None = None,
                   outputs: PlanOutputs | None = None) -> tuple[list, Any]:
        """Open this plan's sinks on ``stack`` (closed, i.e. finalised, however the run ends): ``(sinks, summary)``.
        The summary sink is always there (the table the CLI prints); it writes a PNG only when asked. ``outputs``
        (default: a new one) closes them together and records which outputs were written (:class:`PlanOutputs`)."""
        from rtfer.sinks import AnnotatedVideoSink, CSVSink, JSONLSink, SummarySink, run_title

        outs = outputs if outputs is not None else PlanOutputs()
        outs.planned = self.outputs()
        stack.push(outs)  # registered before the first open: a sink that fails to open closes those opened
        sinks: list = []
        if self.csv is not None:
            sinks.append(outs.open(CSVSink(self.csv, raw=self.raw), self.csv, "CSV"))
        if self.jsonl is not None:
            sinks.append(outs.open(JSONLSink(self.jsonl, raw=self.raw), self.jsonl, "JSON Lines"))
        if self.annotated is not None:
            audio = self.input if getattr(source, "kind", None) == "video" else None
            sinks.append(outs.open(AnnotatedVideoSink(self.annotated, source.fps or 25.0, audio_from=audio,
                                                      width=self.annotated_width),
                                   self.annotated, "annotated video"))
        describe = pipeline.describe() if callable(getattr(pipeline, "describe", None)) else {}
        summary = outs.open(SummarySink(
            self.summary_png, title=run_title(str(getattr(source, "name", self.input)), describe.get("bundle")),
            duration_s=getattr(source, "duration_s", None)), self.summary_png, "summary plot")
        sinks.append(summary)
        if self.report is not None:
            from rtfer.report import ReportSink

            sinks.append(outs.open(ReportSink.for_run(self.report, source, pipeline, command=command), self.report,
                                   "HTML report"))
        outs.ready = True
        return sinks, summary


class PlanOutputs:
    """A plan's sinks, closed (finalised) together however the run ends: each file is renamed into place when
    complete, or dropped when a write failed; then ``written`` and ``not_written`` list ``(path, what)`` and
    ``(path, what, reason)``. Used as an exit callback: after an error it raises one
    :class:`~rtfer.errors.OutputError` that names every output that was not written (and those that were, up to
    the error); after Ctrl-C it raises nothing (the run layer reports it)."""

    def __init__(self) -> None:
        self._sinks: list[tuple[Any, str | None, str]] = []
        self.written: list[tuple[str, str]] = []
        self.not_written: list[tuple[str, str, str]] = []
        self.failed: list[tuple[str, str, str]] = []  # not written because a write failed (not for want of frames)
        self.ready = False  # every sink opened: the run started (else nothing is kept)
        self.planned: list[tuple[str, str]] = []  # (path, what) of the plan's outputs, opened or not

    def open(self, sink, path: str | None, what: str):
        self._sinks.append((sink, None if path is None else str(path), what))
        sink.open()
        return sink

    def close(self) -> list[tuple[Any, str]]:
        """Close every sink (last opened first); returns ``(sink, error)`` for those whose close failed."""
        failed = []
        for sink, _, _ in reversed(self._sinks):
            output = getattr(sink, "output", None)
            if not self.ready and output is not None and not output.error:
                output.error = "the run did not start"  # another output could not be opened
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others; reported below
                failed.append((sink, _reason(exc)))
        errors = dict((id(s), e) for s, e in failed)
        for sink, path, what in self._sinks:
            if path is None:
                continue  # the summary table without a plot
            output = getattr(sink, "output", None)
            ok = id(sink) not in errors and bool(getattr(sink, "_opened", True))
            if output is not None:
                ok = ok and output.written
            if ok:
                self.written.append((path, what))
            elif getattr(output, "empty", False) and id(sink) not in errors:
                log.warning("%s %s not written: no frame to write", what, path)
                self.not_written.append((path, what, "no frame to write"))
            else:
                reason = errors.get(id(sink)) or getattr(output, "error", None) or "not finalised"
                self.not_written.append((path, what, reason))
                self.failed.append((path, what, reason))
        known = {path for path, _ in self.written} | {path for path, _, _ in self.not_written}
        for path, what in self.planned:
            if path not in known:  # never opened: an output before it could not be
                self.not_written.append((path, what, "the run did not start"))
        return failed

    def __call__(self, exc_type, exc, tb) -> bool:
        self.close()
        if not self.failed or exc_type is not None and not issubclass(exc_type, Exception):
            return False  # Ctrl-C, GeneratorExit: the run layer says what was written
        names = ", ".join(f"{what} {path}" for path, what, _ in self.not_written)
        first = str(exc) if isinstance(exc, RtferError) else \
            f"cannot write {self.failed[0][1]} {self.failed[0][0]}: {self.failed[0][2]}"
        kept = ", ".join(f"{what} {path}" for path, what in self.written)
        message = f"{first}; not written: {names}" + (f"; written up to the error: {kept}" if kept else "")
        if exc is not None and not isinstance(exc, RtferError):
            log.warning("%s", message)
            return False  # an internal error keeps its own report
        raise OutputError(message) from None


def _reason(exc: BaseException) -> str:
    """Why a sink could not be finalised, without repeating "cannot write X path:"."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("cannot write ") and ": " in text else text


def default_output(spec: str) -> str:
    """The CSV an input writes when ``-o`` is not given: its stem in the current folder (camera0.csv, stream.csv)."""
    if is_live_spec(spec):
        name = "camera" + spec if str(spec).isdigit() else "stream"
    else:
        name = Path(spec).stem or "output"
    return f"{name}.csv"


def check_format(path: str | None, allowed: Sequence[str], what: str) -> None:
    if path and Path(path).suffix.lower() not in allowed:
        raise OutputError(f"{what} {path}: the file name must end in {', '.join(allowed)}")


def check_output_path(path: str, what: str, sources: dict[Path, str]) -> Path:
    """Refuse an output ``path`` whose folder does not exist or cannot be written, that is a directory, or that is
    one of the inputs (``sources``: resolved path -> the input as given); returns the resolved path."""
    import os

    resolved = Path(path).expanduser().resolve()
    if not resolved.parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: folder {resolved.parent} does not exist")
    if resolved.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory")
    if not os.access(resolved.parent, os.W_OK | os.X_OK):  # the temporary file and the rename need it
        raise OutputError(f"cannot write {what} {path}: folder {resolved.parent} is not writable")
    if resolved in sources:
        raise OutputError(f"the {what} output {path} is the input {sources[resolved]}: writing it would "
                          "destroy the input; choose another output path")
    return resolved


def check_plans(plans: Sequence[OutputPlan], *, overwrite: bool = False) -> None:
    """Refuse, before anything is opened for writing: an output folder that does not exist or cannot be written, a
    summary, report or annotated video with a format we cannot write, an output that is one of the inputs, two
    outputs of the same run on one path (two inputs named clip.mp4 in different folders both default to clip.csv),
    and an existing file that rtfer did not write, unless ``overwrite`` (an earlier rtfer output is replaced:
    :func:`rtfer.sinks.atomic.written_by_rtfer`)."""
    from rtfer.sinks.atomic import VIDEO_FORMATS, check_replace

    sources: dict[Path, str] = {}
    for plan in plans:
        if not is_live_spec(plan.input):
            sources[Path(plan.input).expanduser().resolve()] = plan.input
    seen: dict[Path, str] = {}
    for plan in plans:
        for path, what in plan.outputs():
            resolved = check_output_path(path, what, sources)
            if resolved in seen:
                raise OutputError(f"the {what} output {path} would overwrite the {seen[resolved]} output of the same "
                                  "run; give each output its own path (several inputs: use --out-dir DIR)")
            seen[resolved] = what
    for plan in plans:
        check_format(plan.summary_png, SUMMARY_FORMATS, "summary plot")
        check_format(plan.report, REPORT_FORMATS, "report")
        check_format(plan.annotated, VIDEO_FORMATS, "annotated video")
    for plan in plans:
        for path, what in plan.outputs():
            check_replace(path, what, overwrite=overwrite)


def plan_outputs(inputs: Sequence[str], *, csv: str | None = None, jsonl: str | None = None,
                 annotated: str | None = None, summary_png: str | None = None, report: str | None = None,
                 raw: bool = False, overwrite: bool = False, annotated_width: int | None = None) -> list[OutputPlan]:
    """One checked :class:`OutputPlan` per input. ``report`` "" = beside each CSV. A folder of videos, or one
    explicit output path shared by several inputs, is refused: each input must get its own outputs. An existing
    file that rtfer did not write is refused unless ``overwrite`` (see :func:`check_plans`)."""
    for spec in inputs:
        p = Path(spec)
        if p.is_dir() and any(f.suffix.lower() in VIDEO_EXTENSIONS for f in p.rglob("*") if f.is_file()):
            raise InputError(f"{spec} is a folder of videos: use --out-dir DIR to write one CSV per video")
    if len(inputs) > 1:
        shared = [flag for flag, value in (("-o", csv), ("--jsonl", jsonl), ("--annotated", annotated),
                                           ("--summary", summary_png), ("--report", report)) if value]
        if shared:
            raise InputError(f"several inputs would all write to the one {'/'.join(shared)} path: use --out-dir DIR "
                             "(outputs per input), or run the inputs one at a time")
    plans = []
    for spec in inputs:
        out = csv or default_output(spec)
        where = None if report is None else (report or str(Path(out).with_suffix(".html")))
        plans.append(OutputPlan(str(spec), out, jsonl, annotated, summary_png, where, raw,
                                annotated_width=annotated_width))
    check_plans(plans, overwrite=overwrite)
    return plans


def lock_outputs(plans: Sequence[OutputPlan]) -> ExitStack:
    """Lock every output of ``plans`` (:class:`rtfer.locking.PathLock`) until the returned context exits: a second
    run writing one of them at the same time is refused with one line naming this one. The run layer locks a plan's
    outputs again around its run (the locks are re-entrant), so a caller locks up front only to fail fast."""
    from rtfer.locking import PathLock

    stack = ExitStack()
    try:
        for plan in plans:
            for path, what in plan.outputs():
                stack.enter_context(PathLock(path, what))
    except BaseException:
        stack.close()
        raise
    return stack


# ----------------------------------------------------------------------------------------------------------- writer
_END = object()
_POLL_S = 0.1  # how often the writer thread looks at its queue without a wake-up


def append_to(sinks: Iterable[Any], result: FrameResult | StreamGap, annotated=None) -> None:
    """Append one frame to each sink; sinks with ``accepts_annotated`` get the frame already annotated, if it is.
    A :class:`~rtfer.types.StreamGap` goes to the sinks that record gaps (``append_gap``: the timelines) only."""
    if isinstance(result, StreamGap):
        for sink in sinks:
            if callable(getattr(sink, "append_gap", None)):
                sink.append_gap(result)
        return
    for sink in sinks:
        if annotated is not None and getattr(sink, "accepts_annotated", False):
            sink.append(result, annotated=annotated)
        else:
            sink.append(result)


class SinkWriter:
    """Appends each frame to the sinks on a thread of its own, fed by a bounded queue.

    :meth:`submit` blocks while the queue is full (a slow disk holds the pipeline back; no row is ever dropped) and
    raises the writer's error, such as a full disk, in the submitting thread. :meth:`close` writes what is queued and
    joins the thread; the sinks themselves are closed by their owner. Sinks with ``accepts_annotated`` receive the
    frame annotated once by the consumer (the app shows the same image), others annotate themselves if they need to.
    """

    def __init__(self, sinks: Iterable[Any], *, maxsize: int = WRITER_QUEUE, timer: StageTimer | None = None,
                 name: str = "rtfer-writer") -> None:
        self.sinks = list(sinks)
        self.timer = timer
        self.written = 0
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, result: FrameResult, annotated=None) -> None:
        self._raise()
        while True:
            try:
                self._q.put((result, annotated), timeout=0.1)
                return
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise OutputError("the output writer stopped")

    def close(self) -> None:
        """Write everything queued, stop the thread and raise its error, if any."""
        while self._thread.is_alive():
            try:
                self._q.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        """Raise the writer's error once; the writer stays stopped (a later frame after a gap would tear the files)."""
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def _loop(self) -> None:
        while True:
            # Poll rather than wait for a wake-up: a Ctrl-C that lands inside the submitting (main) thread's
            # Queue.put, between Condition.notify's release of this thread's waiter and its removal from the
            # waiter list, leaves the next put's notify releasing that stale waiter instead: a wait without a
            # timeout would then sleep forever with _END queued, and close() would hang on join().
            try:
                item = self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if self._error is not None:
                continue  # failed: drain so that the submitter never blocks, and report the first error
            result, annotated = item
            t0 = time.perf_counter()
            try:
                append_to(self.sinks, result, annotated)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = exc
                continue
            if isinstance(result, StreamGap):
                continue  # a gap row is not a frame: no count, no timings
            self.written += 1
            if self.timer is not None:
                self.timer.add({**result.timings_ms, "write": (time.perf_counter() - t0) * 1e3})


# -------------------------------------------------------------------------------------------------------------- run
class Processed(NamedTuple):
    """A frame as :meth:`Run.frames` yields it: the result, and its annotated image when the run annotates."""

    result: FrameResult
    annotated: Any = None


class Run:
    """One input through one pipeline into sinks, with its timings and summary.

    ``source``: an open source (:func:`open_input`) or a spec, opened with the pipeline options' policy. ``plan``: the
    outputs this run opens and finalises itself; ``sinks``: more sinks owned by the caller (opened and closed by it,
    e.g. the app's recording and its summary, which outlive one run). ``annotate``: a label scale (or a function
    returning the current one, which the app's user may switch mid-run); each frame that carries an image is
    annotated once, for :meth:`frames` and for the sinks that accept it. ``paused``: an event that
    holds the run. ``max_frames``: stop after that many (bench).
    """

    def __init__(self, pipeline: Pipeline, source: Any, *, plan: OutputPlan | None = None, sinks: Iterable[Any] = (),
                 cancel: threading.Event | None = None, paused: threading.Event | None = None,
                 annotate: str | Callable[[], str] | None = None, keep_images: bool | None = None, progress: bool = False,
                 max_frames: int | None = None, command: str | None = None,
                 writer_queue: int = WRITER_QUEUE) -> None:
        self.pipeline = pipeline
        self.spec = source
        self.plan = plan
        self.extra_sinks = list(sinks)
        self.cancel = cancel
        self.paused = paused
        self.annotate = annotate
        self.keep_images = keep_images
        self.progress = progress
        self.max_frames = max_frames
        self.command = command
        self.writer_queue = writer_queue
        name = redact_url(str(plan.input if plan is not None else getattr(source, "name", source)))
        self.stats = RunStats(input=name, output=str(plan.csv or "") if plan is not None else "")
        self.source = None
        self.outputs: PlanOutputs | None = None  # the plan's outputs, once opened: which were written

    def execute(self) -> RunStats:
        """Run to the end of the input (or the cancel, or ``max_frames``) and return the stats. Ctrl-C raises
        :class:`~rtfer.errors.RunInterrupted` once the outputs are final; it lists those written."""
        frames = self.frames()
        try:
            for _ in frames:
                pass
        except KeyboardInterrupt as exc:
            frames.close()  # an interrupt between two frames: finalise now (a no-op when the run ended already)
            if isinstance(exc, RunInterrupted):
                raise
            raise RunInterrupted(self.stats.written, self.stats.not_written) from None
        return self.stats

    def frames(self) -> Iterator[Processed]:
        """Yield each processed frame; the sinks receive it on the writer thread. Closing the generator early stops
        the pipeline; outputs are finalised however the run ends, Ctrl-C included."""
        o = getattr(self.pipeline, "options", None)
        src = self.spec
        if not (hasattr(src, "__next__") and hasattr(src, "kind")):
            src = open_input(src, prefetch=getattr(o, "prefetch", 8), drop_frames=getattr(o, "realtime", None),
                             reconnect_s=getattr(o, "reconnect_s", None))
        self.source = src
        stats, timer = self.stats, StageTimer()
        t_start = time.perf_counter()
        summary = None
        with ExitStack() as stack:
            shield = InterruptShield()
            stack.push(shield.end)  # runs last: Ctrl-C counts again once every output is final
            stack.callback(src.close)
            sinks = list(self.extra_sinks)
            if self.plan is not None:
                from rtfer.locking import PathLock

                for path, what in self.plan.outputs():  # another run writing one of them is refused, in one line
                    stack.enter_context(PathLock(path, what))
                self.outputs = PlanOutputs()
                stack.callback(self._record_outputs)
                owned, summary = self.plan.open_sinks(stack, src, self.pipeline, command=self.command,
                                                      outputs=self.outputs)
                sinks += owned
            writer = SinkWriter(sinks, maxsize=self.writer_queue, timer=timer)
            # Live outputs (rtfer.live) mark each run's start and end: before its first frame, after its last
            hooked = [sink for sink in sinks if callable(getattr(sink, "run_started", None))]
            for sink in hooked:
                sink.run_started(self._run_info(src))
            stack.callback(self._finish, writer, timer, t_start, summary, hooked)
            keep = True if self.plan is not None and self.plan.keep_images else self.keep_images
            if any(getattr(sink, "needs_images", False) for sink in sinks) and not getattr(o, "keep_images", False):
                keep = True  # the live page shows the latest frame
            kwargs = {"keep_images": keep} if keep is not None else {}  # None: the pipeline's own option
            bar = self._progress_bar(stack, src)
            results = self.pipeline.run(src, cancel=_PipelineStop(self.cancel) if self.cancel else None, **kwargs)
            stack.callback(_close, results)
            stack.push(shield.begin)  # runs first: a second Ctrl-C must not break the finalising of the outputs
            annotate = None
            if self.annotate is not None:
                from rtfer.annotate import annotate
            gaps_written = 0  # a live stream's gaps (reconnects) go to the timelines in order, see _write_gaps
            try:
                for result in results:
                    while self.paused is not None and self.paused.is_set() and not self._cancelled():
                        time.sleep(0.02)
                    if self._cancelled():
                        break
                    image = None
                    if annotate is not None and result.image is not None:
                        scale = self.annotate() if callable(self.annotate) else self.annotate
                        image = annotate(result.image, result, scale=scale)
                    gaps_written = _write_gaps(writer, src, gaps_written, result.index)
                    writer.submit(result, image)
                    stats.frames += 1
                    stats.faces += len(result.faces)
                    if bar is not None:
                        bar.update(1)
                    yield Processed(result, image)
                    if self.max_frames is not None and stats.frames >= self.max_frames:
                        break
            except (KeyboardInterrupt, GeneratorExit):
                stats.status = "partial"
                raise
            _write_gaps(writer, src, gaps_written, None)  # a stream that never came back ends with its gap
        if self._cancelled():
            stats.status = "partial"
        elif getattr(src, "lost", None):  # the outputs are final; the run still failed
            raise InputError(f"{src.lost}; the outputs hold the {stats.frames} frames analysed before it")
        elif stats.frames == 0 and getattr(src, "kind", None) in ("stream", "remote_video", "camera"):
            raise InputError(f"{src.name} delivered no frame" + (f" ({stats.warnings[-1]})" if stats.warnings else ""))

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _record_outputs(self) -> None:
        if self.outputs is not None:
            self.stats.written = list(self.outputs.written)
            self.stats.not_written = list(self.outputs.not_written)

    def _finish(self, writer: SinkWriter, timer: StageTimer, t_start: float, summary, hooked=()) -> None:
        """Write what is queued (the error of a failed writer wins over none), then record the stats."""
        try:
            writer.close()
        finally:
            stats = self.stats
            stats.seconds = time.perf_counter() - t_start
            stats.fps = stats.frames / stats.seconds if stats.seconds > 0 else 0.0
            stats.warnings = list(getattr(self.source, "warnings", []))
            stats.stage_ms = timer.mean()
            stats.summary = summary.summary() if summary is not None else None
            for sink in hooked:
                sink.run_finished(stats, "partial" if self._cancelled() else stats.status)

    def _run_info(self, src) -> dict:
        """What live outputs announce at a run's start: the source, and the pipeline that analyses it."""
        describe = self.pipeline.describe() if callable(getattr(self.pipeline, "describe", None)) else {}
        spec = getattr(getattr(self.pipeline, "bundle", None), "spec", None)
        options = getattr(self.pipeline, "options", None)
        return {"source": str(getattr(src, "name", self.stats.input)), "kind": getattr(src, "kind", None),
                "fps": getattr(src, "fps", None), "duration_s": getattr(src, "duration_s", None),
                "bundle_name": getattr(spec, "name", None), "bundle_version": getattr(spec, "version", None),
                "smoothing": getattr(options, "smoothing", None), **describe}

    def _progress_bar(self, stack: ExitStack, src):
        if not self.progress or getattr(src, "live", False):
            return None
        from tqdm import tqdm

        return stack.enter_context(tqdm(total=getattr(src, "frame_count", None), unit="frame",
                                        desc=Path(str(self.stats.input)).name, leave=False, dynamic_ncols=True))


class InterruptShield:
    """While a run's outputs are finalised, Ctrl-C and SIGTERM are noted (one log line), not raised: a second Ctrl-C
    must not leave a half-written plot or report. After the outputs are final, a noted interrupt is raised if the
    run was not stopping already (so a multi-input command stops before its next input). Signal handlers can be set
    only in the main thread; elsewhere (the app's worker) this does nothing."""

    def __init__(self) -> None:
        self.pending = False
        self._saved: dict = {}

    def begin(self, *exc_info) -> bool:
        import signal

        if threading.current_thread() is threading.main_thread() and not self._saved:
            for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
                if sig is None:
                    continue
                try:
                    self._saved[sig] = signal.signal(sig, self._note)
                except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                    pass
        return False

    def _note(self, signum, frame) -> None:
        if not self.pending:
            log.warning("finishing the outputs; interrupt noted (they are written in a moment)")
        self.pending = True

    def end(self, exc_type, exc, tb) -> bool:
        import signal

        saved, self._saved = self._saved, {}
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if self.pending and exc_type is None:
            raise KeyboardInterrupt
        return False


class _PipelineStop(threading.Event):
    """The stop event a run hands its pipeline: set by the caller's cancel, or by the pipeline itself when it ends
    (which stops its threads) without setting the caller's event, so that a run that reached the end of its input
    is not taken for a cancelled one."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel

    def is_set(self) -> bool:
        return super().is_set() or self._cancel.is_set()


def _write_gaps(writer: SinkWriter, src: Any, done: int, index: int | None) -> int:
    """Hand the source's stream gaps (:attr:`rtfer.capture.StreamSource.gaps`) to the writer after the first ``done``:
    each one before the first frame after it (``index`` is the frame about to be written; None = every gap left, at
    the end of the run). Returns how many are written."""
    gaps = getattr(src, "gaps", None) or ()
    while done < len(gaps):
        gap = gaps[done]
        if index is not None and (gap.resume_index is None or index < gap.resume_index):
            break
        writer.submit(gap)
        done += 1
    return done


def _close(generator) -> None:
    close = getattr(generator, "close", None)
    if callable(close):
        close()  # stops the pipeline's threads when the run ends early


def run_file(input_path: Any, plan: OutputPlan, *, pipeline: Pipeline | None = None,
             options: AnalyzeOptions | None = None, progress: bool = False, cancel: threading.Event | None = None,
             command: str | None = None, sinks: Iterable[Any] = ()) -> RunStats:
    """Analyse one input into the outputs of ``plan`` (opened before any work, so an unwritable output fails fast)
    and into ``sinks``, opened and closed by the caller (the live outputs, which outlive one input)."""
    options = options or (pipeline.options if pipeline is not None else AnalyzeOptions())
    pipe = pipeline or Pipeline(options)
    src = open_input(input_path, prefetch=options.prefetch, drop_frames=options.realtime,
                     reconnect_s=options.reconnect_s)
    return Run(pipe, src, plan=plan, sinks=sinks, cancel=cancel, progress=progress, command=command).execute()


def process_file(input_path, output_csv=None, options: AnalyzeOptions | None = None, *,
                 pipeline: Pipeline | None = None, raw: bool = False, progress: bool = False, jsonl=None,
                 annotated=None, summary_png=None, cancel: threading.Event | None = None, report=None,
                 command: str | None = None) -> RunStats:
    """Analyse one input into the requested files (:func:`run_file` with an :class:`OutputPlan` built from
    paths; batch mode calls it per video). Sinks are opened before any work (so an unwritable output fails fast),
    written on the writer thread and closed, i.e. renamed into place, however the run ends, Ctrl-C included.
    ``report``: an HTML report path (rtfer.report; ``command`` is the command line it quotes, default sys.argv)."""
    paths = [None if p is None else str(p) for p in (output_csv, jsonl, annotated, summary_png, report)]
    plan = OutputPlan(str(input_path), *paths, raw=raw)
    return run_file(input_path, plan, pipeline=pipeline, options=options, progress=progress, cancel=cancel,
                    command=command)


# --------------------------------------------------------------------------------------------- the app's summaries
class SharedSummary:
    """A summary that the writer thread updates and another thread may copy (the app's export), across the runs of
    one session (a seek starts a new run; the summary goes on)."""

    def __init__(self) -> None:
        self._acc = SummaryAccumulator()
        self._lock = threading.Lock()

    def append(self, result: FrameResult) -> None:
        with self._lock:
            self._acc.update(result)

    def snapshot(self) -> SummaryAccumulator:
        with self._lock:
            return copy.deepcopy(self._acc)


def write_summary(acc: SummaryAccumulator, png_path: Any, *, title: str | None = None) -> Path:
    """Render ``acc`` into ``png_path`` (checked first); raises :class:`~rtfer.errors.OutputError` on failure."""
    from rtfer.sinks import prepare_output_path

    return write_summary_png(acc, prepare_output_path(Path(png_path), "summary", written_at_end=True), title=title)


class Recording:
    """The app's recording: a CSV timeline and optionally the annotated video, switched on and off while a source
    runs. It is a sink of every run (appended to on the writer thread, with the frame the app already annotated);
    a write error stops the recording, not the analysis, and is passed to ``on_error``."""

    accepts_annotated = True

    def __init__(self, on_error: Callable[[str], Any] | None = None) -> None:
        self.on_error = on_error
        self._lock = threading.Lock()
        self._sinks: list[Any] = []
        self._paths: list[Path] = []

    @property
    def active(self) -> bool:
        return bool(self._sinks)

    def start(self, csv_path: Any, video_path: Any = None, *, raw: bool = False, fps: float | None = None) -> None:
        """Start writing from the next frame on; raises :class:`~rtfer.errors.OutputError` when a file cannot be
        created (nothing is left open then)."""
        from rtfer.sinks import AnnotatedVideoSink, CSVSink

        self.stop()
        sinks: list[Any] = []
        try:
            sinks.append(CSVSink(Path(csv_path), raw=raw).open())
            if video_path is not None:
                sinks.append(AnnotatedVideoSink(Path(video_path), fps=fps or 25.0).open())
        except Exception as exc:
            for sink in sinks:
                sink.close()
            if isinstance(exc, RtferError):
                raise
            raise OutputError(f"cannot start recording to {csv_path}: {exc}") from exc
        with self._lock:
            self._sinks = sinks
            self._paths = [Path(csv_path)] + ([Path(video_path)] if video_path is not None else [])
        log.info("recording to %s", ", ".join(map(str, self._paths)))

    def stop(self) -> list[Path]:
        """Close (finalise) the files; returns their paths (empty when nothing was recording)."""
        with self._lock:
            sinks, paths = self._sinks, self._paths
            self._sinks, self._paths = [], []
            errors = []
            for sink in sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - report, keep closing the others
                    errors.append(str(exc))
        if errors:
            raise OutputError(f"recording could not be finalised: {errors[0]}")
        return paths

    def append(self, result: FrameResult, annotated=None) -> None:
        with self._lock:
            if not self._sinks:
                return
            try:
                append_to(self._sinks, result, annotated)
                return
            except Exception as exc:  # noqa: BLE001 - a full disk stops the recording, not the analysis
                message = f"recording stopped: {exc}"
        try:
            self.stop()
        except RtferError:
            pass
        if self.on_error is not None:
            self.on_error(message)


def detector_names() -> tuple[str, ...]:
    from rtfer.detection import DETECTORS

    return tuple(DETECTORS)


def smoothing_methods() -> tuple[str, ...]:
    from rtfer.smoothing import METHODS

    return tuple(METHODS)


def read_bundle_spec(path: Any):
    """The :class:`~rtfer.bundle.BundleSpec` of a bundle folder or name (raises :class:`~rtfer.errors.BundleError`)."""
    from rtfer.bundle import BundleSpec

    return BundleSpec.read(path)


__all__ = [
    "BACKENDS",
    "STAGES",
    "AnalyzeOptions",
    "OutputPlan",
    "PacedSource",
    "PlanOutputs",
    "Pacing",
    "Pipeline",
    "Processed",
    "Recording",
    "Run",
    "RunStats",
    "SharedSummary",
    "SinkWriter",
    "add_live_arguments",
    "check_format",
    "check_input",
    "check_output_path",
    "check_plans",
    "default_output",
    "detector_names",
    "is_live_spec",
    "list_cameras",
    "open_live_sinks",
    "lock_outputs",
    "open_input",
    "plan_outputs",
    "process_file",
    "read_bundle_spec",
    "run_file",
    "smoothing_methods",
    "write_summary",
]
