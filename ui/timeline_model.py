"""Qt-free ring buffers of per-track valence and class probabilities for the timeline plot.

The worker thread appends every result; the UI reads a snapshot on a timer (never per frame), so a lock guards
the buffers. Memory is bounded: ``capacity`` points per track and at most ``max_tracks`` tracks (oldest dropped).

Image folders have no time and no tracks (every image is t = 0 and its faces are numbered from 0), so in ``images``
mode the buffer keeps one :class:`ImageEntry` per image instead (the last ``capacity`` images), indexed 1, 2, ...
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from rtfer.labels import NUM_CLASSES
from rtfer.types import FrameResult


@dataclass
class ImageEntry:
    """One analysed image: its position in the folder (1-based), file name, and its faces' valence and (n, 7)
    smoothed probabilities in detection order."""

    index: int
    name: str
    valence: np.ndarray
    probs: np.ndarray


@dataclass
class TrackSeries:
    """A snapshot of one track's history: times (s), valence and (n, 7) smoothed probabilities."""

    track_id: int
    times: np.ndarray
    valence: np.ndarray
    probs: np.ndarray


class TimelineBuffer:
    """Per-track ring buffers fed by :meth:`append` (any thread) and read by :meth:`snapshot` (any thread)."""

    def __init__(self, capacity: int = 3000, max_tracks: int = 32) -> None:
        self.capacity = int(capacity)
        self.max_tracks = int(max_tracks)
        self._lock = threading.Lock()
        self._tracks: OrderedDict[int, deque] = OrderedDict()
        self._last_time = 0.0
        self._last_keys: tuple[int, ...] = ()
        self._version = 0
        self.mode = "time"  # "images" for image folders (set_mode)
        self._images: deque[ImageEntry] = deque(maxlen=self.capacity)
        self._image_count = 0

    def set_mode(self, mode: str) -> None:
        """``time`` (videos, cameras, streams: one series per track over time) or ``images`` (one entry per image)."""
        if mode not in ("time", "images"):
            raise ValueError(f"timeline mode must be 'time' or 'images', got {mode!r}")
        with self._lock:
            self.mode = mode
            self._version += 1

    def append(self, result: FrameResult) -> None:
        """Add one frame's faces. Faces without a track id (-1) are keyed by their row so they still show."""
        faces = result.faces
        probs = result.smoothed.probs
        vals = result.smoothed.valence
        if self.mode == "images":
            with self._lock:
                self._image_count += 1
                self._images.append(ImageEntry(self._image_count, str(result.source or ""),
                                               np.asarray(vals, np.float32).copy(),
                                               np.asarray(probs, np.float32).reshape(-1, NUM_CLASSES).copy()))
                self._last_keys = tuple(range(len(faces)))
                self._last_time = float(self._image_count)
                self._version += 1
            return
        with self._lock:
            self._last_time = float(result.time_s)
            self._version += 1
            keys = []
            for row in range(len(faces)):
                tid = int(faces.track_ids[row])
                key = tid if tid >= 0 else -(row + 1)
                keys.append(key)
                buf = self._tracks.get(key)
                if buf is None:
                    buf = deque(maxlen=self.capacity)
                    self._tracks[key] = buf
                    while len(self._tracks) > self.max_tracks:
                        self._tracks.popitem(last=False)
                else:
                    self._tracks.move_to_end(key)
                buf.append((float(result.time_s), float(vals[row]), probs[row].astype(np.float32, copy=True)))
            self._last_keys = tuple(sorted(keys))

    def clear(self) -> None:
        with self._lock:
            self._tracks.clear()
            self._images.clear()
            self._image_count = 0
            self._last_time = 0.0
            self._last_keys = ()
            self._version += 1

    @property
    def version(self) -> int:
        """Increases on every change, so a redraw timer can skip work when nothing is new."""
        return self._version

    @property
    def last_time(self) -> float:
        """The newest frame's time (s); in ``images`` mode the newest image's index."""
        return self._last_time

    def images(self, since_index: int = 0) -> list[ImageEntry]:
        """The kept images with index >= ``since_index`` (``images`` mode), oldest first."""
        with self._lock:
            return [e for e in self._images if e.index >= since_index]

    @property
    def last_image(self) -> ImageEntry | None:
        with self._lock:
            return self._images[-1] if self._images else None

    @property
    def last_keys(self) -> tuple[int, ...]:
        """Track keys of the newest frame (the faces on screen now), sorted."""
        return self._last_keys

    def snapshot(self, since_s: float | None = None) -> list[TrackSeries]:
        """Copies of every track's points (only those at or after ``since_s`` when given), ordered by track id."""
        with self._lock:
            items = [(key, list(buf)) for key, buf in self._tracks.items()]
        out = []
        for key, points in sorted(items, key=lambda kv: kv[0]):
            if since_s is not None:
                points = [p for p in points if p[0] >= since_s]
            if not points:
                continue
            times = np.fromiter((p[0] for p in points), np.float64, len(points))
            vals = np.fromiter((p[1] for p in points), np.float32, len(points))
            probs = np.stack([p[2] for p in points]).reshape(-1, NUM_CLASSES)
            out.append(TrackSeries(key, times, vals, probs))
        return out

    @staticmethod
    def frame_interval(series: list[TrackSeries]) -> float:
        """The typical time between a track's points (median over all tracks; 0 when unknown)."""
        diffs = [np.diff(s.times) for s in series if len(s.times) > 1]
        diffs = np.concatenate(diffs) if diffs else np.zeros(0)
        diffs = diffs[diffs > 0]
        return float(np.median(diffs)) if len(diffs) else 0.0

    @staticmethod
    def values_at(series: list[TrackSeries], time_s: float,
                  tolerance_s: float = 1.0) -> list[tuple[int, float, float, np.ndarray]]:
        """For hover: each track's (id, time, valence, probs) nearest to ``time_s`` within ``tolerance_s`` (a track
        with no point that close was not on screen then and is left out)."""
        out = []
        for s in series:
            i = int(np.argmin(np.abs(s.times - time_s)))
            if abs(s.times[i] - time_s) <= tolerance_s:
                out.append((s.track_id, float(s.times[i]), float(s.valence[i]), s.probs[i]))
        return out
