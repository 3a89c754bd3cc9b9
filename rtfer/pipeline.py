"""The runtime pipeline: capture -> detect -> track -> align -> batch -> infer -> stack -> smooth -> results.

Three threads joined by bounded queues: the source decodes ahead on its own thread; a *front* thread detects,
tracks and aligns; the consumer (the thread iterating :meth:`Pipeline.run`) batches several frames' faces into one
inference call per member, stacks, smooths and yields :class:`FrameResult` objects in frame order. Stateful objects
(tracker on the front thread, smoother on the consumer thread) live on one thread each and need no locks. Nothing
collects a whole video: memory is bounded by the queue sizes.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rtfer._queues import END, StopQueue
from rtfer.smoothing import CONFIDENCE_TEMPERATURE
from rtfer.types import EmotionScores, Faces, Frame, FrameResult

log = logging.getLogger(__name__)

#: Classifications per second per tracked face (``--classify-rate``). Measured on the fixture clips with
#: ``python benchmarks/classify_rate.py``: at 10/s the smoothed label agrees with every-frame classification on 99% of
#: face rows, steady clips switch <= 0.2 times/s and a step is followed within 5 frames at 30 fps, for 40% of the
#: classifier calls; 6/s and below lag more than 8 frames on a weak (0.5) step.
DEFAULT_CLASSIFY_RATE = 10.0
#: With only large faces in view, the detector runs on a frame downscaled until the smallest face is about this wide
#: (CenterFace finds faces from ~12 px; 96 px keeps its landmarks as steady as at full size on the fixture clips).
DEFAULT_DET_FACE_PX = 96
#: The most frames whose faces share one inference call. The members take 64 faces per call (larger batches are
#: split), so more frames gain nothing, and up to twice as many frames wait in the queue.
MAX_BATCH_FRAMES = 64
STAGES = ("decode", "detect", "track", "align", "infer", "stack", "smooth")


@dataclass
class AnalyzeOptions:
    """Everything that shapes one analysis run. Picklable, so batch workers can receive it."""

    bundle: str = "default"
    backend: str = "auto"
    device: str = "auto"
    detector: str = "auto"
    every: int = 3  # run the detector every N frames, track faces with optical flow in between
    max_faces: int = 50
    det_width: int = 640  # frames are downscaled to this width for detection (never upscaled)
    det_face_px: int = DEFAULT_DET_FACE_PX  # with only large faces in view, detect on a smaller frame; 0 = never
    min_face: int = 20  # minimum face box side in frame pixels
    det_threshold: float = 0.5
    smoothing: str = "hmm"
    smoothing_strength: float = 0.5
    classify_rate: float = DEFAULT_CLASSIFY_RATE  # classifications per second per tracked face; 0 = every frame
    confidence_temperature: float = CONFIDENCE_TEMPERATURE  # calibrates smoothed probabilities (>= 1; 1 = none)
    batch_frames: int = 8  # frames whose faces share one inference call (files only; live sources use 1)
    keep_images: bool = False  # attach each frame's image to its FrameResult (UI, annotated video)
    realtime: bool | None = None  # latest-frame-wins capture; None = on for cameras and streams
    allow_fallback: bool = False  # let a missing GPU fall back to CPU instead of failing
    prefetch: int = 8
    precision: str = "auto"  # classifier precision (rtfer.bundle.PRECISIONS): auto = INT8 on CPU when accepted
    combiner: str = "default"  # how members combine: the bundle's own, or one of its bundle.json "combiners"
    reconnect_s: float | None = None  # a live stream that drops is retried this long; None = 60 s, 0 = never

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, got {self.every}")
        if self.max_faces < 1:
            raise ValueError(f"--max-faces must be >= 1, got {self.max_faces}")
        if self.smoothing not in ("none", "ema", "hmm"):
            raise ValueError(f"smoothing must be none, ema or hmm, got {self.smoothing!r}")
        if not self.classify_rate >= 0.0 or self.classify_rate == float("inf"):
            raise ValueError(f"classify rate must be >= 0 per second (0 = every frame), got {self.classify_rate}")
        if not 1.0 <= self.confidence_temperature < float("inf"):
            raise ValueError(f"confidence temperature must be >= 1, got {self.confidence_temperature}")
        if self.batch_frames < 1:
            raise ValueError(f"--batch-frames must be >= 1, got {self.batch_frames}")
        if self.batch_frames > MAX_BATCH_FRAMES:
            raise ValueError(f"--batch-frames must be at most {MAX_BATCH_FRAMES}, got {self.batch_frames}: a "
                             "classifier call takes 64 faces, and more frames would only wait in memory")
        if not 0.0 <= self.smoothing_strength <= 1.0:
            raise ValueError(f"smoothing strength must be between 0 and 1, got {self.smoothing_strength}")
        if self.reconnect_s is not None and not 0.0 <= self.reconnect_s < float("inf"):
            raise ValueError(f"--reconnect must be >= 0 seconds (0 = never), got {self.reconnect_s}")
        if self.det_width < 64:
            raise ValueError(f"detection width must be at least 64 pixels, got {self.det_width}")
        if not 0.0 < self.det_threshold < 1.0:
            raise ValueError(f"detector threshold must be between 0 and 1 (exclusive), got {self.det_threshold}")
        if self.det_face_px < 0:
            raise ValueError(f"detection face size must be >= 0 pixels (0 = off), got {self.det_face_px}")
        if self.min_face < 0:
            raise ValueError(f"minimum face size must be >= 0 pixels, got {self.min_face}")


def resolve_detector(requested: str, spec) -> str:
    """The detector to create: ``auto`` means the one the bundle's alignment template was fitted to (so accuracy
    does not depend on which model packs happen to sit in the user's home folder); an explicit choice that differs
    from the bundle's is honoured with a visible warning."""
    bundle_detector = getattr(spec, "detector", None)
    if requested == "auto":
        if bundle_detector:
            log.info("detector auto: %s (the detector bundle %s was aligned for)", bundle_detector, spec.name)
            return bundle_detector
        return "auto"
    if bundle_detector and requested != bundle_detector:
        log.warning("bundle %s was aligned with %s landmarks; --detector %s places landmarks differently, which may "
                    "lower accuracy", spec.name, bundle_detector, requested)
    return requested


@dataclass
class _Prepared:
    """A frame after the front stages: its faces and aligned crops per member input size. It holds the frame's
    pixels only when the results keep them (``keep_images``): a queued frame otherwise costs its crops, not a
    whole (4K: 25 MB) image."""

    index: int
    time_s: float
    source: str
    captured: float
    width: int
    height: int
    image: np.ndarray | None
    faces: Faces
    crops: dict[int, np.ndarray]
    timings: dict[str, float]
    independent: bool  # image / folder inputs: no tracking or smoothing across frames

    @classmethod
    def of(cls, frame: Frame, keep_image: bool, faces: Faces, crops: dict[int, np.ndarray],
           timings: dict[str, float], independent: bool) -> _Prepared:
        return cls(frame.index, frame.time_s, frame.source, frame.captured, frame.width, frame.height,
                   frame.image if keep_image else None, faces, crops, timings, independent)


class Pipeline:
    """Loads the bundle and the detector once; :meth:`run` analyses one source at a time."""

    def __init__(self, options: AnalyzeOptions | None = None, bundle=None, detector=None) -> None:
        from rtfer.bundle import load_bundle
        from rtfer.detection import create_detector

        self.options = options or AnalyzeOptions()
        o = self.options
        self.bundle = bundle if bundle is not None else load_bundle(
            o.bundle, backend=o.backend, device=o.device, allow_fallback=o.allow_fallback, precision=o.precision,
            combiner=o.combiner)
        # The detector runs on onnxruntime: on a GPU machine it uses CUDA when onnxruntime-gpu is installed and
        # otherwise stays on the CPU with a logged warning (the classifiers still use the GPU).
        from rtfer.devices import parse_device

        device = parse_device(self.bundle.device)
        det_device = str(device) if device.is_gpu else "cpu"  # keeps cuda:N
        self.detector = detector if detector is not None else create_detector(
            resolve_detector(o.detector, self.bundle.spec), det_width=o.det_width, score_threshold=o.det_threshold,
            min_face=o.min_face, max_faces=o.max_faces, device=det_device, allow_fallback=True)
        self.sizes = sorted(set(self.bundle.input_sizes))

    def describe(self) -> dict:
        b = self.bundle
        return {"bundle": f"{b.spec.name} {b.spec.version}" + (" (interim)" if b.spec.interim else ""),
                "backend": b.backend_name, "device": b.backends[0].active_device,
                "detector": getattr(self.detector, "name", type(self.detector).__name__)}

    # ----------------------------------------------------------------------------------------------------------
    def run(self, source, cancel: threading.Event | None = None, *,
            keep_images: bool | None = None) -> Iterator[FrameResult]:
        """Yield one FrameResult per frame of ``source`` (a spec for :func:`rtfer.capture.open_source` or an
        open Source). Stops early when ``cancel`` is set; closing the generator stops every thread.
        ``keep_images`` overrides ``options.keep_images`` for this run only."""
        from rtfer.capture import open_source

        o = self.options
        src = source if hasattr(source, "__next__") and hasattr(source, "kind") else None
        if src is None:  # realtime None: cameras and live streams drop frames, files (local or http) do not
            src = open_source(source, prefetch=o.prefetch, drop_frames=o.realtime, reconnect_s=o.reconnect_s)
        live = getattr(src, "live", src.kind in ("camera", "stream"))  # duck-typed sources may lack .live
        batch_frames = 1 if live else o.batch_frames
        q = StopQueue(max(2, 2 * batch_frames), cancel)
        keep = o.keep_images if keep_images is None else keep_images
        front = threading.Thread(target=self._front, args=(src, q, keep), name="rtfer-front", daemon=True)
        front.start()
        from rtfer.smoothing import make_smoother

        smoother = make_smoother(o.smoothing, o.smoothing_strength, confidence_temperature=o.confidence_temperature)
        schedule = ClassifySchedule(o.classify_rate, adaptive=live)
        dropped = getattr(src, "dropped", 0)
        try:
            done = False
            while not done:
                item = q.get(front)
                if item is END:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch = [item]
                while len(batch) < batch_frames:
                    try:
                        nxt = q.get_ready(timeout=0 if live else 0.002)
                    except queue.Empty:
                        break
                    if nxt is END:
                        done = True
                        break
                    if isinstance(nxt, BaseException):
                        yield from self._finish(batch, smoother, schedule)
                        raise nxt
                    batch.append(nxt)
                yield from self._finish(batch, smoother, schedule)
                if live:  # classify less often before the source has to drop frames
                    now_dropped = getattr(src, "dropped", 0)
                    schedule.observe_load(schedule.busy_s / max(len(batch), 1), dropped=now_dropped > dropped)
                    dropped = now_dropped
        finally:
            q.stop.set()
            q.drain()
            front.join(timeout=5)
            src.close()

    # ----------------------------------------------------------------------------------------------------------
    def _front(self, src, q: StopQueue, keep_images: bool) -> None:
        """Detect, track and align on a thread of its own."""
        from rtfer.detection.align import align_faces
        from rtfer.tracking import Tracker

        tracker = Tracker()
        template = self.bundle.alignment_template
        every = self.options.every
        widths = DetectionWidth(self.options.det_width, self.options.det_face_px)
        independent = src.kind in ("image", "folder")
        try:
            it = iter(src)
            n = 0
            while not q.stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                timings = {"decode": (t1 - t0) * 1e3}
                if independent or n % every == 0:
                    width = None if independent else widths.next()
                    faces = (self.detector.detect(frame.image) if width is None
                             else self.detector.detect(frame.image, det_width=width))
                    widths.observe(faces, frame.image.shape[1], width)
                    t2 = time.perf_counter()
                    if independent:
                        faces.track_ids = np.arange(len(faces), dtype=np.int64)
                    else:
                        faces = tracker.update(faces, frame.index, image_bgr=frame.image)  # appearance, flow
                else:
                    t2 = time.perf_counter()
                    faces = tracker.propagate(frame.image, frame.index)
                t3 = time.perf_counter()
                crops = {}
                for size in self.sizes:
                    crops[size], _ = align_faces(frame.image, faces.landmarks, size, template)
                t4 = time.perf_counter()
                timings.update(detect=(t2 - t1) * 1e3, track=(t3 - t2) * 1e3, align=(t4 - t3) * 1e3)
                n += 1
                if not q.put(_Prepared.of(frame, keep_images, faces, crops, timings, independent)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it in order
            q.put(exc)
            return
        q.put(END)

    def _finish(self, batch: list[_Prepared], smoother, schedule: ClassifySchedule | None = None
                ) -> Iterator[FrameResult]:
        """One inference call per member for the faces of ``batch`` that are due (``--classify-rate``), then stack
        and smooth per frame; faces not due hold their track's last raw and smoothed probabilities."""
        t_start = time.perf_counter()
        schedule = schedule if schedule is not None else ClassifySchedule(0.0)
        due = [schedule.due(p.faces.track_ids, p.time_s, smoother, independent=p.independent) for p in batch]
        counts = [int(d.sum()) for d in due]
        total = sum(counts)
        t0 = time.perf_counter()
        if total:
            crops = {s: np.concatenate([p.crops[s][d] for p, d in zip(batch, due)]) for s in self.sizes}
            member_probs = self.bundle.member_probs(crops)
        t1 = time.perf_counter()
        probs = self.bundle.combine(member_probs) if total else np.zeros((0, 7), np.float32)
        t2 = time.perf_counter()
        infer_ms = (t1 - t0) * 1e3 / len(batch)
        stack_ms = (t2 - t1) * 1e3 / len(batch)
        start = 0
        busy = t2 - t_start
        for p, d, n in zip(batch, due, counts):
            fresh = probs[start:start + n]
            start += n
            t3 = time.perf_counter()
            ids = p.faces.track_ids
            raw = np.zeros((len(ids), 7), np.float32)
            raw[d] = fresh
            if p.independent:
                smoothed = raw
            else:
                smoothed = np.zeros_like(raw)
                if n:
                    smoothed[d] = smoother.update(ids[d], fresh, p.time_s)
                    schedule.remember(ids[d], fresh)
                if n < len(ids):
                    raw[~d] = schedule.held_raw(ids[~d])
                    smoothed[~d] = smoother.hold(ids[~d], p.time_s)
            t4 = time.perf_counter()
            busy += t4 - t3
            timings = dict(p.timings, infer=infer_ms, stack=stack_ms, smooth=(t4 - t3) * 1e3)
            yield FrameResult(index=p.index, time_s=p.time_s, source=p.source, faces=p.faces,
                              raw=EmotionScores(raw, self.bundle.posterior_shift),
                              smoothed=EmotionScores(smoothed, self.bundle.posterior_shift), timings_ms=timings,
                              image=p.image, width=p.width, height=p.height, captured=p.captured)
        schedule.busy_s = busy


class DetectionWidth:
    """The detection width per detection call on one source.

    While no face, or a small one, is in view the detector gets the full ``--det-width`` frame. With only large faces
    in view (a webcam or a close-up clip) it gets a frame downscaled until the smallest face is about ``face_px``
    wide, at least ``min_width``: on a 480 px clip with a 240 px face that is a third of the pixels and about a
    fifth of the detector's time. Every ``full_every``-th call is a full-width pass (about once a second at the
    default ``--every 3``), so a small face entering the scene is still found; a call that finds nothing goes
    back to the full width at once. ``face_px`` 0 always detects at the full width.
    """

    def __init__(self, max_width: int, face_px: int = DEFAULT_DET_FACE_PX, *, min_width: int = 160,
                 full_every: int = 10) -> None:
        self.max_width = int(max_width)
        self.face_px = int(face_px)
        self.min_width = int(min_width)
        self.full_every = max(1, int(full_every))
        self._reduced: int | None = None  # the width the faces last seen allow; None = full
        self._calls_since_full = 0

    def next(self) -> int | None:
        """The width for the next detection call; None = the detector's full width."""
        if self.face_px <= 0 or self._reduced is None or self._calls_since_full >= self.full_every - 1:
            return None
        return self._reduced

    def observe(self, faces: Faces, frame_width: int, used: int | None) -> None:
        """Record what the call at width ``used`` (None = full) found in a frame ``frame_width`` pixels wide."""
        self._calls_since_full = 0 if used is None else self._calls_since_full + 1
        if self.face_px <= 0 or len(faces) == 0:
            self._reduced = None
            return
        xyxy = np.asarray(faces.xyxy, np.float64)
        smallest = float(np.min(np.minimum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])))
        full = min(self.max_width, int(frame_width))
        width = int(frame_width * self.face_px / max(smallest, 1.0)) // 32 * 32
        self._reduced = max(self.min_width, width) if width < 0.75 * full else None


class ClassifySchedule:
    """Which tracked faces to classify on a frame: each track at most ``rate`` times per second (0 = every frame).

    A track is due when it is new, when the smoother has no state to hold for it, or when its next slot has come
    (slots are ``1 / rate`` apart, so the average rate is ``rate`` whatever the frame rate); untracked faces (id -1)
    and image inputs are always classified. Between its classifications a track holds its last raw and smoothed
    probabilities, so every frame keeps its row.

    ``adaptive`` (live sources): :meth:`observe_load` lengthens the classification period while the consumer cannot
    keep up with the source (it dropped frames, or classifying took more than ``high_load`` of the frame interval),
    down to ``min_rate`` per track, and shortens it again once the load is below ``low_load``. Frames are dropped
    only when even ``min_rate`` is too much. Lives on the consumer thread (no locks).
    """

    def __init__(self, rate: float = 0.0, *, adaptive: bool = False, min_rate: float = 1.0,
                 high_load: float = 0.9, low_load: float = 0.5) -> None:
        if not rate >= 0.0 or rate == float("inf"):
            raise ValueError(f"classify rate must be >= 0 per second (0 = every frame), got {rate}")
        self.period = 0.0 if rate == 0 else 1.0 / float(rate)
        self.adaptive = bool(adaptive)
        self.max_period = max(self.period, 1.0 / float(min_rate))
        self.high_load, self.low_load = float(high_load), float(low_load)
        self.live_period = 0.0  # extra period imposed by load (0 = none)
        self.busy_s = 0.0  # seconds the last batch kept the consumer busy (set by the pipeline)
        self._next: dict[int, float] = {}
        self._raw: dict[int, np.ndarray] = {}
        self._seen: dict[int, float] = {}
        self._last_time: float | None = None
        self._frame_dt = 1 / 30

    @property
    def effective_period(self) -> float:
        """Seconds between two classifications of one track now (0 = every frame)."""
        return max(self.period, self.live_period)

    def due(self, track_ids: np.ndarray, time_s: float, smoother=None, *, independent: bool = False) -> np.ndarray:
        """(n,) bool: the faces to classify on this frame; updates the tracks' next slots."""
        ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        t = float(time_s)
        if self._last_time is not None:
            if t < self._last_time:  # a seek or a new source
                for state in (self._next, self._raw, self._seen):
                    state.clear()
            elif t > self._last_time:
                self._frame_dt = 0.8 * self._frame_dt + 0.2 * (t - self._last_time)
        self._last_time = t
        out = np.ones(len(ids), bool)
        period = self.effective_period
        if independent:
            return out
        for i, tid in enumerate(ids.tolist()):
            self._seen[tid] = t
            if tid < 0 or period <= 0:
                continue
            nxt = self._next.get(tid)
            # something to hold: remembered raw the smoother still smooths, or (a batch of frames is scheduled
            # before any of it is classified) a classification scheduled on an earlier frame of this batch
            if tid in self._raw:
                held = smoother is None or smoother.has(tid)
            else:
                held = nxt is not None
            if nxt is not None and held and t < nxt - 1e-3:
                out[i] = False
                continue
            self._next[tid] = nxt + period if nxt is not None and nxt + period > t else t + period
        if len(self._seen) > 4 * max(len(ids), 16):  # bounded: forget tracks unseen for a while
            for tid in [k for k, v in self._seen.items() if t - v > 5.0]:
                for state in (self._seen, self._next, self._raw):
                    state.pop(tid, None)
        return out

    def remember(self, track_ids: np.ndarray, raw: np.ndarray) -> None:
        """Store the fresh raw probabilities of classified tracks (held until their next classification)."""
        for tid, row in zip(np.asarray(track_ids).tolist(), raw):
            if tid >= 0:
                self._raw[tid] = np.array(row, np.float32)

    def held_raw(self, track_ids: np.ndarray) -> np.ndarray:
        """(n, 7) the last raw probabilities of tracks that are not classified on this frame."""
        return np.stack([self._raw[int(t)] for t in track_ids]) if len(track_ids) else np.zeros((0, 7), np.float32)

    def observe_load(self, busy_s: float, *, dropped: bool = False) -> None:
        """Live sources: adapt the period to the load (busy seconds per frame / frame interval)."""
        if not self.adaptive:
            return
        load = busy_s / max(self._frame_dt, 1e-3)
        before = self.effective_period
        if dropped or load > self.high_load:
            self.live_period = min(self.max_period, max(1.5 * self.live_period, 2 * self._frame_dt))
        elif load < self.low_load and self.live_period > 0:
            self.live_period *= 0.8
            if self.live_period < 1.5 * self._frame_dt:
                self.live_period = 0.0
        after = self.effective_period
        if (after > 0) != (before > 0) or abs(after - before) > 0.25 * max(before, 1e-9) and after >= 0.25:
            log.debug("live load %.2f%s: classifying each face every %.2f s", load, " (frames dropped)" if dropped
                      else "", after)


def analyze(source, *, pipeline: Pipeline | None = None, cancel: threading.Event | None = None,
            **options) -> Iterator[FrameResult]:
    """Yield :class:`FrameResult` objects for ``source`` lazily. ``options`` are :class:`AnalyzeOptions` fields."""
    pipe = pipeline or Pipeline(AnalyzeOptions(**options))
    yield from pipe.run(source, cancel=cancel)


# ------------------------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What one processed input produced (one manifest row in batch mode)."""

    input: str
    output: str
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    warnings: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | partial (interrupted)
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    summary: object = None  # rtfer.sinks.Summary when the caller asked for one
    written: list = field(default_factory=list)  # (path, what) of each output renamed into place
    not_written: list = field(default_factory=list)  # (path, what, reason) of each output that was not


class StageTimer:
    """Accumulates per-stage timings over a run (constant memory)."""

    def __init__(self) -> None:
        self.total = {k: 0.0 for k in (*STAGES, "write")}
        self.frames = 0

    def add(self, timings: dict[str, float]) -> None:
        self.frames += 1
        for k, v in timings.items():
            self.total[k] = self.total.get(k, 0.0) + v

    def mean(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {k: v / n for k, v in self.total.items()}
