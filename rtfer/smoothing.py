"""Per-track temporal smoothing of (n, 7) emotion probabilities (pure numpy).

Frame-by-frame classifier output flickers; a face's expression changes on a time scale of a few hundred ms. Each
smoother keeps one state per track id, is time-aware (it uses the elapsed seconds, so variable frame rates and
dropped frames behave) and forgets a track unseen for ``max_age_s``. Faces with track id -1 (untracked) pass through
unsmoothed (renormalised). A repeated timestamp counts as one reference step (``ref_dt_s``); a time earlier than
the previous update (a seek or a new source) clears every track.

``strength`` in [0, 1] maps to each method's parameter (0 = no smoothing for every method):

* ``ema``: half-life ``h = strength * EMA_MAX_HALF_LIFE_S`` (0.6 s), so the default 0.5 gives 0.3 s. The weight on
  a new observation after ``dt`` seconds is ``alpha = 1 - 0.5 ** (dt / h)`` (the same decay per second whatever
  the frame rate). A step between two confident classes is followed after about one half-life.
* ``hmm``: forward filter over the 7 classes. The transition matrix per reference step (``ref_dt_s`` = 1/30 s) is
  ``T = lam * I + (1 - lam) * U`` (U: every entry 1/7): self-transition ``p_stay = lam + (1 - lam) / 7``, the rest
  spread uniformly. ``strength`` maps log-linearly to the stickiness: ``1 - lam = 10 ** (-4 * strength)``
  (0 -> lam 0, i.e. no memory; 0.25 -> 0.9; 0.5 -> 0.99; 0.75 -> 0.999; 1 -> 0.9999). After ``dt`` seconds the
  matrix is ``T ** (dt / ref_dt) = lam ** (dt / ref_dt) * I + (1 - lam ** (dt / ref_dt)) * U``: exact for this
  family, it is the stickiness ``lam`` that is raised to ``dt / ref_dt`` (raising ``p_stay`` itself would fall
  below 1/7 for long gaps and make them anti-sticky). The model's probabilities are the likelihoods (divided by
  the flat prior 1/7, which cancels on normalising): ``posterior ∝ p_model * (T_dt^T @ belief)``. The HMM
  accumulates evidence, so ambiguous flicker is suppressed strongly while a confident change is followed within a
  few frames (measured by :func:`rtfer.stability.step_lag_frames`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtfer.labels import NUM_CLASSES

log = logging.getLogger(__name__)

METHODS = ("none", "ema", "hmm")
#: EMA half-life at strength 1.
EMA_MAX_HALF_LIFE_S = 0.6
#: HMM: 1 - lam = 10 ** (-HMM_DECADES * strength).
HMM_DECADES = 4.0
#: Probability floor so that a class the model once called impossible can still take over later.
_PROB_FLOOR = 1e-6


def ema_half_life(strength: float) -> float:
    """EMA half-life in seconds for ``strength`` in [0, 1] (linear: 0 -> 0 s, 0.5 -> 0.3 s, 1 -> 0.6 s)."""
    return float(_check_strength(strength)) * EMA_MAX_HALF_LIFE_S


def hmm_lambda(strength: float) -> float:
    """HMM stickiness ``lam`` per reference step: ``1 - 10 ** (-4 * strength)`` (0 -> 0, 0.5 -> 0.99, 1 -> 0.9999)."""
    s = _check_strength(strength)
    return 0.0 if s == 0 else 1.0 - 10.0 ** (-HMM_DECADES * s)


def hmm_p_stay(strength: float) -> float:
    """Self-transition probability per reference step: ``lam + (1 - lam) / 7`` (0 -> 1/7 = no memory)."""
    lam = hmm_lambda(strength)
    return lam + (1.0 - lam) / NUM_CLASSES


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0 or s != s:
        raise ValueError(f"smoothing strength must be in [0, 1], got {strength}")
    return s


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(axis=-1, keepdims=True)
    out = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / NUM_CLASSES)
    return out


@dataclass
class _Track:
    state: np.ndarray  # (7,) float64
    last_time: float


class Smoother:
    """Base: per-track state, forgetting and the id -1 passthrough. Subclasses implement ``_step``.

    Lives on one pipeline thread; not thread-safe by design (no locks needed, STYLE 8).
    """

    method = "none"

    def __init__(self, strength: float = 0.5, *, max_age_s: float = 2.0, ref_dt_s: float = 1 / 30) -> None:
        self.strength = _check_strength(strength)
        if max_age_s <= 0 or ref_dt_s <= 0:
            raise ValueError("max_age_s and ref_dt_s must be positive")
        self.max_age_s = float(max_age_s)
        self.ref_dt_s = float(ref_dt_s)
        self._tracks: dict[int, _Track] = {}
        self._last_time: float | None = None

    # -- public --------------------------------------------------------------------------------------------------
    def update(self, track_ids: np.ndarray, probs: np.ndarray, time_s: float) -> np.ndarray:
        """Smooth one frame's rows. ``track_ids`` (n,), ``probs`` (n, 7) -> (n, 7) float32, rows summing to 1."""
        ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        p = np.asarray(probs, dtype=np.float64)
        if p.size == 0:
            p = p.reshape(0, NUM_CLASSES)
        if p.ndim != 2 or p.shape[1] != NUM_CLASSES or len(p) != len(ids):
            raise ValueError(f"expected track_ids (n,) and probs (n, {NUM_CLASSES}); got {ids.shape} and {p.shape}")
        t = float(time_s)
        if self._last_time is not None and t < self._last_time:
            log.debug("time went back from %.3f to %.3f s (seek or new source): smoother state cleared",
                      self._last_time, t)
            self._tracks.clear()
        self._last_time = t
        self._forget(t)
        p = _normalise(p)
        out = p.copy()
        rows = np.flatnonzero(ids >= 0)
        if len(rows) == 0:
            return out.astype(np.float32)
        # vectorised over the frame's tracked faces: known tracks step, new ones initialise (a duplicated id is
        # smoothed against the track's previous state twice; the last row's state is kept)
        known = [r for r in rows if int(ids[r]) in self._tracks]
        new = [r for r in rows if int(ids[r]) not in self._tracks]
        if known:
            states = np.stack([self._tracks[int(ids[r])].state for r in known])
            dt = np.array([t - self._tracks[int(ids[r])].last_time for r in known])[:, None]
            dt = np.where(dt > 0, dt, self.ref_dt_s)
            out[known] = _normalise(self._step(states, p[known], dt))
        if new:
            out[new] = _normalise(self._init(p[new]))
        for r in rows:
            self._tracks[int(ids[r])] = _Track(out[r].copy(), t)
        return out.astype(np.float32)

    def apply(self, faces, scores, time_s: float):
        """Stage form: ``(Faces, EmotionScores, time) -> EmotionScores`` (smoothed)."""
        from rtfer.types import EmotionScores

        return EmotionScores(self.update(faces.track_ids, scores.probs, time_s))

    def reset(self) -> None:
        """Forget every track (new source)."""
        self._tracks.clear()
        self._last_time = None

    @property
    def track_ids(self) -> list[int]:
        """Ids with live state."""
        return sorted(self._tracks)

    def __len__(self) -> int:
        return len(self._tracks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.strength}, max_age_s={self.max_age_s})"

    # -- internals -----------------------------------------------------------------------------------------------
    def _forget(self, t: float) -> None:
        stale = [tid for tid, tr in self._tracks.items() if t - tr.last_time > self.max_age_s]
        for tid in stale:
            del self._tracks[tid]

    def _init(self, p: np.ndarray) -> np.ndarray:
        return p.copy()

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """States (m, 7), observations (m, 7), elapsed seconds (m, 1) -> new states (m, 7)."""
        return p.copy()


class NoSmoother(Smoother):
    """Passthrough (renormalised): ``--smoothing none``."""

    method = "none"


class EMASmoother(Smoother):
    """Time-aware exponential moving average: ``s <- s + alpha * (p - s)``, ``alpha = 1 - 0.5 ** (dt / half_life)``."""

    method = "ema"

    def __init__(self, strength: float = 0.5, **kwargs) -> None:
        super().__init__(strength, **kwargs)
        self.half_life_s = ema_half_life(self.strength)

    def alpha(self, dt):
        """Weight of a new observation ``dt`` seconds (a float or an array) after the previous one."""
        if self.half_life_s <= 0:
            return np.ones_like(np.asarray(dt, dtype=np.float64))
        return 1.0 - 0.5 ** (np.asarray(dt, dtype=np.float64) / self.half_life_s)

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        a = self.alpha(dt)
        return (1.0 - a) * state + a * p


class HMMSmoother(Smoother):
    """Causal forward filter with a sticky, time-aware transition matrix (see the module docstring)."""

    method = "hmm"

    def __init__(self, strength: float = 0.5, **kwargs) -> None:
        super().__init__(strength, **kwargs)
        self.lam = hmm_lambda(self.strength)
        self.p_stay = hmm_p_stay(self.strength)

    def transition(self, dt: float) -> np.ndarray:
        """(7, 7) transition matrix for a gap of ``dt`` seconds: ``lam**(dt/ref_dt) I + (1 - lam**(dt/ref_dt)) U``."""
        lam = self.lam ** (dt / self.ref_dt_s) if self.lam > 0 else 0.0
        return lam * np.eye(NUM_CLASSES) + (1.0 - lam) / NUM_CLASSES

    def _init(self, p: np.ndarray) -> np.ndarray:
        # flat prior times the first likelihood
        return _normalise(np.maximum(p, _PROB_FLOOR))

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        lam = self.lam ** (dt / self.ref_dt_s) if self.lam > 0 else 0.0
        predicted = lam * state + (1.0 - lam) / NUM_CLASSES  # == transition(dt).T @ state (T is symmetric)
        likelihood = np.maximum(p, _PROB_FLOOR) / (1.0 / NUM_CLASSES)  # model posterior / flat prior
        return _normalise(predicted * likelihood)


_REGISTRY: dict[str, Callable[..., Smoother]] = {"none": NoSmoother, "ema": EMASmoother, "hmm": HMMSmoother}


def make_smoother(method: str = "ema", strength: float = 0.5, **kwargs) -> Smoother:
    """Create a smoother: ``method`` in {"none", "ema", "hmm"}; ``kwargs``: ``max_age_s``, ``ref_dt_s``."""
    key = str(method).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown smoothing method {method!r}; choose from {', '.join(METHODS)}")
    return _REGISTRY[key](strength, **kwargs)
