"""Qt-free ring buffers of per-track valence and class probabilities for the timeline plot.

The worker thread appends every result; the UI reads a snapshot on a timer (never per frame), so a lock guards
the buffers. Memory is bounded: ``capacity`` points per track and at most ``max_tracks`` tracks (oldest dropped).
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from rtfer.labels import NUM_CLASSES, valence
from rtfer.types import FrameResult


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

    def append(self, result: FrameResult) -> None:
        """Add one frame's faces. Faces without a track id (-1) are keyed by their row so they still show."""
        faces = result.faces
        probs = result.smoothed.probs
        vals = valence(probs) if len(probs) else np.zeros(0, np.float32)
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
            self._last_time = 0.0
            self._last_keys = ()
            self._version += 1

    @property
    def version(self) -> int:
        """Increases on every change, so a redraw timer can skip work when nothing is new."""
        return self._version

    @property
    def last_time(self) -> float:
        return self._last_time

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
    def values_at(series: list[TrackSeries], time_s: float,
                  tolerance_s: float = 1.0) -> list[tuple[int, float, float, np.ndarray]]:
        """For hover: each track's (id, time, valence, probs) nearest to ``time_s`` within ``tolerance_s``."""
        out = []
        for s in series:
            i = int(np.argmin(np.abs(s.times - time_s)))
            if abs(s.times[i] - time_s) <= tolerance_s:
                out.append((s.track_id, float(s.times[i]), float(s.valence[i]), s.probs[i]))
        return out
