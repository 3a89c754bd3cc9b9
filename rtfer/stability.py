"""Label-stability metrics for a face's (T, 7) probability sequence, and the step-response lag of a smoother.

Smoothing trades flicker for delay: ``label_switches_per_second`` and ``mean_total_variation`` measure flicker,
``step_lag_frames`` measures how many frames the smoothed label needs to follow a real change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtfer.labels import CLASSES, NUM_CLASSES


def _as_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must be (T, {NUM_CLASSES}), got {p.shape}")
    return p


def label_switches(probs: np.ndarray) -> int:
    """Number of frames whose argmax label differs from the previous frame's."""
    labels = _as_probs(probs).argmax(axis=1)
    return int(np.count_nonzero(labels[1:] != labels[:-1]))


def label_switches_per_second(probs: np.ndarray, times_s: np.ndarray) -> float:
    """Argmax label changes per second of the sequence (NaN when it spans no time)."""
    p = _as_probs(probs)
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if len(t) != len(p):
        raise ValueError(f"{len(p)} probability rows but {len(t)} times")
    duration = float(t[-1] - t[0]) if len(t) else 0.0
    if len(p) < 2 or duration <= 0:
        return float("nan")
    return label_switches(p) / duration


def mean_total_variation(probs: np.ndarray) -> float:
    """Mean over consecutive frames of the total-variation distance 0.5 * |p_t - p_{t-1}|_1 (NaN for T < 2)."""
    p = _as_probs(probs)
    if len(p) < 2:
        return float("nan")
    return float(0.5 * np.abs(np.diff(p, axis=0)).sum(axis=1).mean())


@dataclass
class Stability:
    """Stability of one sequence."""

    frames: int
    duration_s: float
    switches_per_s: float
    mean_tv: float


def stability(probs: np.ndarray, times_s: np.ndarray) -> Stability:
    """Both flicker metrics for one sequence."""
    p = _as_probs(probs)
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    return Stability(len(p), float(t[-1] - t[0]) if len(t) else 0.0, label_switches_per_second(p, t),
                     mean_total_variation(p))


def peaked(cls: int, confidence: float = 0.8) -> np.ndarray:
    """A (7,) distribution with ``confidence`` on ``cls`` and the rest spread evenly."""
    p = np.full(NUM_CLASSES, (1.0 - confidence) / (NUM_CLASSES - 1))
    p[cls] = confidence
    return p


def step_sequence(a: int | str = "neutral", b: int | str = "happiness", *, fps: float = 30.0, n_before: int = 30,
                  n_after: int = 60, confidence: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (T, 7) sequence peaked on class ``a`` for ``n_before`` frames then on ``b``; returns (probs, times)."""
    ia = CLASSES.index(a) if isinstance(a, str) else int(a)
    ib = CLASSES.index(b) if isinstance(b, str) else int(b)
    probs = np.vstack([np.tile(peaked(ia, confidence), (n_before, 1)), np.tile(peaked(ib, confidence), (n_after, 1))])
    return probs, np.arange(n_before + n_after) / float(fps)


def step_lag_frames(smoother_factory: Callable[[], object], a: int | str = "neutral", b: int | str = "happiness", *,
                    fps: float = 30.0, n_before: int = 30, n_after: int = 60, confidence: float = 0.8) -> int | None:
    """Frames after a step from class ``a`` to ``b`` until the smoothed argmax first equals ``b``.

    0 means the label follows on the first frame of the new class (no smoothing); None means it did not follow
    within ``n_after`` frames. ``smoother_factory()`` returns an object with ``update(track_ids, probs, time_s)``.
    """
    probs, times = step_sequence(a, b, fps=fps, n_before=n_before, n_after=n_after, confidence=confidence)
    ib = int(probs[n_before].argmax())
    smoother = smoother_factory()
    ids = np.zeros(1, dtype=np.int64)
    for k, (row, t) in enumerate(zip(probs, times)):
        out = np.asarray(smoother.update(ids, row[None], float(t)))
        if k >= n_before and int(out[0].argmax()) == ib:
            return k - n_before
    return None
