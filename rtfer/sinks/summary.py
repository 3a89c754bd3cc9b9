"""The end-of-run summary: per-face totals and binned series in bounded memory (:class:`SummaryAccumulator`), the
table the CLI prints (:class:`Summary`, :func:`summary_table`) and :class:`SummarySink`, which writes the PNG."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.labels import CLASSES, NUM_CLASSES, valence
from rtfer.sinks.atomic import AtomicPath
from rtfer.sinks.base import Sink, prepare_output_path
from rtfer.sinks.plot import write_summary_png
from rtfer.types import FrameResult


@dataclass
class FaceSummary:
    """Totals for one face (track). For an image folder a face is one image's face: ``source`` names the image."""

    face_id: int
    frames: int
    seconds: float
    first_s: float
    last_s: float
    dominant: str
    dominant_share: float
    mean_valence: float
    shares: dict[str, float]
    source: str | None = None
    key: int | None = None  # the accumulator's key for this face (its series); the face id for a single source
    mean_probs: dict[str, float] | None = None

    def label(self, per_image: bool = False) -> str:
        """``face 3``, or ``img.jpg face 0`` when faces come from several images."""
        return f"{self.source} face {self.face_id}" if per_image and self.source else f"face {self.face_id}"


@dataclass
class Summary:
    """What the CLI prints at the end of a run."""

    frames: int
    frames_without_faces: int
    faces: list[FaceSummary] = field(default_factory=list)
    per_image: bool = False  # faces come from several independent images (a folder): one row per image's face
    end_s: float = 0.0  # the last frame's time

    def table(self) -> str:
        return summary_table(self)

    def by_screen_time(self) -> list[FaceSummary]:
        """Faces with the most time on screen first (then the most frames, then the lowest id)."""
        return sorted(self.faces, key=lambda f: (-round(f.seconds, 1), -f.frames, f.source or "", f.face_id))


def summary_table(summary: Summary, *, max_rows: int = 50) -> str:
    """Fixed-width table: per face frames, seconds, dominant emotion, its share and mean valence."""
    faces = sorted(summary.faces, key=lambda f: (-f.frames, f.source or "", f.face_id))
    if summary.per_image:
        width = max([6] + [len(f.label(True)) for f in faces[:max_rows]])
        head = f"{'face':<{width}}  {'dominant':<10}  {'conf':>6}  {'valence':>7}"
        lines = [head]
        for f in faces[:max_rows]:
            conf = (f.mean_probs or {}).get(f.dominant, f.dominant_share)
            lines.append(f"{f.label(True):<{width}}  {f.dominant:<10}  {conf:>6.1%}  {f.mean_valence:>+7.3f}")
    else:
        head = f"{'face':>6}  {'frames':>7}  {'seconds':>8}  {'dominant':<10}  {'share':>6}  {'valence':>7}"
        lines = [head]
        for f in faces[:max_rows]:
            lines.append(f"{f.face_id:>6}  {f.frames:>7}  {f.seconds:>8.1f}  {f.dominant:<10}  {f.dominant_share:>6.1%}"
                         f"  {f.mean_valence:>+7.3f}")
    if len(faces) > max_rows:
        lines.append(f"... {len(faces) - max_rows} more faces")
    lines.append(f"{summary.frames} frames, {summary.frames_without_faces} without faces, {len(faces)} faces")
    return "\n".join(lines)


class _Totals:
    """Constant-size per-face totals (kept for every face)."""

    __slots__ = ("frames", "seconds", "first", "last", "counts", "valence_sum", "prob_sum", "source", "face_id")

    def __init__(self, t: float, source: str | None, face_id: int) -> None:
        self.frames = 0
        self.seconds = 0.0
        self.first = t
        self.last = t
        self.counts = [0] * NUM_CLASSES
        self.valence_sum = 0.0
        self.prob_sum = np.zeros(NUM_CLASSES, dtype=np.float64)
        self.source = source
        self.face_id = face_id


#: Keys of faces from a second, third... source (image folders) start here, far above any track id.
_OTHER_SOURCE_KEYS = 1 << 40


class SummaryAccumulator:
    """Per-face totals plus a binned time series for the longest faces and for the room, in bounded memory.

    Series share one time grid of at most ``max_bins`` bins; when a time falls beyond the last bin, the bin width
    doubles and neighbouring bins merge, so a 10-hour video costs the same as a 10-second one. Full series are kept
    for at most ``max_series`` faces (the ones seen most); totals (a few numbers each) for every face. The room series
    holds, per bin, the mean over frames of the mean valence of the faces in view, and the mean number of faces.
    Faces are told apart by (source, id): an image folder's "face 0" of unrelated images are different faces.
    """

    def __init__(self, *, max_bins: int = 256, max_series: int = 16, initial_bin_s: float = 0.25,
                 gap_cap_s: float = 1.0) -> None:
        if max_bins < 2 or max_bins % 2:
            raise ValueError("max_bins must be an even number >= 2")
        self.max_bins = max_bins
        self.max_series = max_series
        self.bin_s = float(initial_bin_s)
        self.gap_cap_s = gap_cap_s
        self.t0: float | None = None
        self.t_end = 0.0  # the latest frame time seen (with or without faces)
        self.frames = 0
        self.frames_without_faces = 0
        self.totals: dict[int, _Totals] = {}
        # per face: (max_bins, 7) prob sums, (max_bins,) valence sums, (max_bins,) counts
        self.series: dict[int, np.ndarray] = {}
        # the room: per bin, sum of frame-mean valence, frames with faces, sum of face counts
        self.room = np.zeros((max_bins, 3), dtype=np.float64)
        self._first_source: str | None = None
        self._sources: set[str | None] = set()
        self._other_keys: dict[tuple[str | None, int], int] = {}
        # time on screen: each frame's duration (to the next frame, at most gap_cap_s) goes to the faces in it
        self._prev_t: float | None = None
        self._prev_keys: list[int] = []
        self._last_dt = 0.0

    @property
    def per_image(self) -> bool:
        """True when faces came from more than one source (an image folder)."""
        return len(self._sources) > 1

    def update(self, result: FrameResult) -> None:
        """Add one frame (smoothed scores)."""
        ids = np.asarray(result.faces.track_ids)
        ids = np.where(ids >= 0, ids, np.arange(len(ids)))
        self.add(float(result.time_s), ids, result.smoothed.probs, source=result.source,
                 valence_values=result.smoothed.valence)

    def key(self, source: str | None, face_id: int) -> int:
        """The accumulator's key of face ``face_id`` of ``source`` (the id itself for the first source)."""
        if not self._sources:
            self._first_source = source
        self._sources.add(source)
        if source == self._first_source:
            return int(face_id)
        k = self._other_keys.get((source, int(face_id)))
        if k is None:
            k = self._other_keys[(source, int(face_id))] = _OTHER_SOURCE_KEYS + len(self._other_keys)
        return k

    def add(self, time_s: float, face_ids: np.ndarray, probs: np.ndarray, *, source: str | None = None,
            valence_values: np.ndarray | None = None) -> None:
        """Array form of :meth:`update`: ``face_ids`` (n,), ``probs`` (n, 7), the frame's ``source`` name and the
        faces' valence (computed from ``probs`` when not given)."""
        self.frames += 1
        self.t_end = max(self.t_end, float(time_s))
        self._credit_previous_frame(float(time_s))
        if len(face_ids) == 0:
            self.frames_without_faces += 1
            return
        if self.t0 is None:
            self.t0 = time_s
        b = self._bin(time_s)
        probs = np.asarray(probs, dtype=np.float64)
        vals = valence(probs) if valence_values is None else np.asarray(valence_values, np.float64)
        tops = probs.argmax(axis=1)
        self.room[b] += (float(np.mean(vals)), 1.0, float(len(face_ids)))
        for fid, p, v, top in zip(np.asarray(face_ids).tolist(), probs, vals.tolist(), tops.tolist()):
            key = self.key(source, fid)
            tot = self.totals.get(key)
            if tot is None:
                tot = self.totals[key] = _Totals(time_s, source, int(fid))
            self._prev_keys.append(key)
            tot.frames += 1
            tot.last = max(tot.last, time_s)
            tot.counts[top] += 1
            tot.valence_sum += v
            tot.prob_sum += p
            s = self._series_for(key)
            if s is not None:
                s[b, :NUM_CLASSES] += p
                s[b, NUM_CLASSES] += v
                s[b, NUM_CLASSES + 1] += 1

    def _credit_previous_frame(self, time_s: float) -> None:
        """Give the faces of the previous frame its duration (the time to this frame, capped at ``gap_cap_s`` for a
        stalled stream): time on screen counts the frames a face has a row in, never the gaps between them."""
        if self._prev_t is not None and time_s > self._prev_t:
            self._last_dt = min(time_s - self._prev_t, self.gap_cap_s)
            for key in self._prev_keys:
                self.totals[key].seconds += self._last_dt
        self._prev_t = time_s
        self._prev_keys = []

    def _bin(self, time_s: float) -> int:
        b = int((time_s - self.t0) // self.bin_s) if time_s > self.t0 else 0
        while b >= self.max_bins:
            half = self.max_bins // 2
            for s in [*self.series.values(), self.room]:
                merged = s.reshape(half, 2, -1).sum(axis=1)
                s[:half] = merged
                s[half:] = 0
            self.bin_s *= 2
            b = int((time_s - self.t0) // self.bin_s)
        return b

    def _series_for(self, key: int) -> np.ndarray | None:
        s = self.series.get(key)
        if s is not None:
            return s
        if len(self.series) >= self.max_series:
            # replace the shortest kept face when this one has been seen more often
            shortest = min(self.series, key=lambda k: self.totals[k].frames)
            if self.totals[key].frames <= self.totals[shortest].frames + 10:
                return None
            del self.series[shortest]
        s = self.series[key] = np.zeros((self.max_bins, NUM_CLASSES + 2), dtype=np.float64)
        return s

    def nbytes(self) -> int:
        """Approximate memory held (series arrays plus totals)."""
        per_total = 200
        return sum(s.nbytes for s in self.series.values()) + self.room.nbytes + per_total * len(self.totals)

    def summary(self) -> Summary:
        faces = []
        for key, tot in self.totals.items():
            shares = {c: n / tot.frames for c, n in zip(CLASSES, tot.counts)}
            dom = max(shares, key=shares.get)
            seconds = tot.seconds + (self._last_dt if key in self._prev_keys else 0.0)  # the last frame's share
            mean_probs = {c: float(v) for c, v in zip(CLASSES, tot.prob_sum / tot.frames)}
            faces.append(FaceSummary(tot.face_id, tot.frames, seconds, tot.first, tot.last, dom, shares[dom],
                                     tot.valence_sum / tot.frames, shares, source=tot.source, key=key,
                                     mean_probs=mean_probs))
        return Summary(self.frames, self.frames_without_faces, faces, per_image=self.per_image, end_s=self.t_end)

    def binned(self, face_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin start times, mean probs (B, 7), mean valence (B,)) for the bins where the face was seen.

        ``face_id`` is the accumulator's key (:attr:`FaceSummary.key`; the face id itself for a single source)."""
        s = self.series[face_id]
        seen = s[:, NUM_CLASSES + 1] > 0
        counts = s[seen, NUM_CLASSES + 1:NUM_CLASSES + 2]
        times = (self.t0 or 0.0) + np.flatnonzero(seen) * self.bin_s
        return times, s[seen, :NUM_CLASSES] / counts, s[seen, NUM_CLASSES] / counts[:, 0]

    def room_binned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin start times, mean valence of the faces in view (B,), mean number of faces in view (B,)) for the bins
        with at least one face."""
        seen = self.room[:, 1] > 0
        n = self.room[seen, 1]
        times = (self.t0 or 0.0) + np.flatnonzero(seen) * self.bin_s
        return times, self.room[seen, 0] / n, self.room[seen, 2] / n


class SummarySink(Sink):
    """Accumulates a bounded summary and, on close, writes a PNG (``png_path``; None = table only).

    The PNG has three panels: valence over time per face, the dominant emotion over time per face (a colour band per
    face) and the share of frames per emotion per face; for an image folder, one row per image's face with its
    class probabilities. ``summary()`` gives the table the CLI prints. ``title`` names the clip and the bundle;
    ``duration_s`` (the clip's length, when known) ends the time axis.
    """

    def __init__(self, png_path: str | os.PathLike | None = None, *, title: str | None = None,
                 accumulator: SummaryAccumulator | None = None, duration_s: float | None = None) -> None:
        super().__init__()
        self.png_path = Path(png_path) if png_path is not None else None
        self.title = title
        self.duration_s = duration_s
        self.acc = accumulator or SummaryAccumulator()

    def open(self) -> SummarySink:
        if self.png_path is not None:
            self.png_path = prepare_output_path(self.png_path, "summary", written_at_end=True)
            self.output = AtomicPath(self.png_path, "summary plot")  # its state; write_summary_png renames
        self._opened = True
        return self

    def append(self, result: FrameResult) -> None:
        self._ensure_open()
        self.acc.update(result)

    def summary(self) -> Summary:
        return self.acc.summary()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.output is not None and self.output.error:
            return  # the run did not start: no plot
        if self.png_path is not None:
            if self.output is None:
                self.output = AtomicPath(self.png_path, "summary plot")
            try:
                write_summary_png(self.acc, self.png_path, title=self.title, duration_s=self.duration_s)
            except Exception as exc:
                self.output.error = str(exc)
                raise
            self.output.written = True


def run_title(source_name: str, bundle: str | None = None) -> str:
    """The title of a run's summary and report: the clip, then the bundle."""
    return f"{source_name} \u2014 bundle {bundle}" if bundle else source_name
