"""Typed pipeline messages. Each holds batched numpy arrays and validates shapes on construction."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from rtfer.labels import NUM_CLASSES, valence


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class Frame:
    """One decoded image. ``time_s`` comes from the container's timestamps (not index / fps); ``captured`` is the
    :func:`time.monotonic` time at which it was decoded (a camera's capture time; live outputs convert it to the LSL
    clock)."""

    index: int
    time_s: float
    image: np.ndarray  # H x W x 3 uint8, BGR
    source: str = ""
    captured: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        _check(isinstance(self.image, np.ndarray), f"Frame.image must be a numpy array, got {type(self.image).__name__}")
        _check(self.image.ndim == 3 and self.image.shape[2] == 3,
               f"Frame.image must be HxWx3, got shape {self.image.shape}")
        _check(self.image.dtype == np.uint8, f"Frame.image must be uint8, got {self.image.dtype}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class Faces:
    """Detected (and later tracked) faces of one frame.

    Landmark order: left eye, right eye, nose, left mouth corner, right mouth corner, as seen in the image.
    """

    xyxy: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.landmarks.size == 0 and n == 0:
            self.landmarks = self.landmarks.reshape(0, 5, 2)
        _check(self.landmarks.shape == (n, 5, 2), f"Faces.landmarks must be ({n}, 5, 2), got {self.landmarks.shape}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        _check(self.scores.shape == (n,), f"Faces.scores must be ({n},), got {self.scores.shape}")
        if self.track_ids is None:
            self.track_ids = np.full(n, -1, dtype=np.int64)
        self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
        _check(self.track_ids.shape == (n,), f"Faces.track_ids must be ({n},), got {self.track_ids.shape}")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def __getitem__(self, index) -> Faces:
        """Select faces with a boolean mask, an index array or a slice."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Faces(self.xyxy[index], self.landmarks[index], self.scores[index], self.track_ids[index])


@dataclass
class EmotionScores:
    """Per-face class probabilities in the canonical order; rows sum to 1. ``posterior_shift``: the combiner's, when
    it has one (``--combiner balanced``); :attr:`valence` goes through it (:func:`rtfer.labels.valence`), so that every
    output (CSV, report, app, live) shows the same valence."""

    probs: np.ndarray
    posterior_shift: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if self.probs.size == 0:
            self.probs = self.probs.reshape(0, NUM_CLASSES)
        _check(self.probs.ndim == 2 and self.probs.shape[1] == NUM_CLASSES,
               f"EmotionScores.probs must be (n, {NUM_CLASSES}), got {self.probs.shape}")
        if len(self.probs):
            sums = self.probs.sum(axis=1)
            _check(bool(np.all(np.abs(sums - 1.0) < 1e-3)),
                   f"EmotionScores rows must sum to 1 (got sums {np.round(sums, 4).tolist()[:5]})")
        if self.posterior_shift is not None:
            self.posterior_shift = np.asarray(self.posterior_shift, dtype=np.float64).reshape(-1)
            _check(self.posterior_shift.shape == (NUM_CLASSES,),
                   f"EmotionScores.posterior_shift (the valence re-weighting) must be {NUM_CLASSES} numbers, "
                   f"got {self.posterior_shift.shape}")

    @functools.cached_property
    def valence(self) -> np.ndarray:
        """(n,) float32: P(positive) - P(negative) of each row, through ``posterior_shift`` when there is one;
        computed on first use (most frames' raw scores never need it)."""
        return valence(self.probs, self.posterior_shift).astype(np.float32)

    def __len__(self) -> int:
        return len(self.probs)

    @classmethod
    def empty(cls) -> EmotionScores:
        return cls(np.zeros((0, NUM_CLASSES), np.float32))


@dataclass
class FrameResult:
    """Everything the pipeline knows about one frame."""

    index: int
    time_s: float
    source: str
    faces: Faces
    raw: EmotionScores
    smoothed: EmotionScores
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None  # the frame (BGR) when the consumer asked to keep it (UI, annotated video)
    width: int = 0
    height: int = 0
    captured: float | None = None  # the source frame's Frame.captured (time.monotonic), when known

    def __post_init__(self) -> None:
        n = len(self.faces)
        _check(len(self.raw) == n and len(self.smoothed) == n,
               f"FrameResult has {n} faces but {len(self.raw)} raw / {len(self.smoothed)} smoothed score rows")


@dataclass
class StreamGap:
    """A live stream that dropped and was reconnected (or never came back) while a run read it.

    ``start_s``: the time of the last frame before the drop (``None`` when it dropped before its first frame);
    ``end_s``: the time of the first frame after it came back (``None`` while away, or if it never returned);
    ``resume_index``: that frame's index; ``reason``: why it dropped (one line, credentials hidden).
    Timeline sinks write it as one row with an empty ``frame`` (CSV) or a ``"gap"`` object (JSON Lines).
    """

    source: str
    start_s: float | None
    reason: str = ""
    end_s: float | None = None
    resume_index: int | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None or self.start_s is None else self.end_s - self.start_s
