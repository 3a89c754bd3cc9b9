"""Per-track temporal smoothing of (n, 7) emotion probabilities (pure numpy).

Frame-by-frame classifier output flickers; a face's expression changes on a time scale of a few hundred ms. Each
smoother keeps one state per track id, is time-aware (it uses the elapsed seconds, so variable frame rates and
dropped frames behave) and forgets a track unseen for ``max_age_s``. Faces with track id -1 (untracked) pass through
unsmoothed (renormalised). A repeated timestamp counts as one reference step (``ref_dt_s``); a time earlier than
the previous update (a seek or a new source) clears every track.

``strength`` in [0, 1] maps to each method's parameter (0 = no smoothing for every method):

* ``ema``: half-life ``h = strength * EMA_MAX_HALF_LIFE_S`` (0.4 s), so the default 0.5 gives 0.2 s. The weight on
  a new observation after ``dt`` seconds is ``alpha = 1 - 0.5 ** (dt / h)`` (the same decay per second whatever
  the frame rate). A step between two confident classes is followed after about one half-life. Hysteresis as for
  the HMM: the shown label moves to the estimate's top class only when that class leads the shown one by
  ``EMA_SWITCH_MARGIN`` in log probability (0.25: a lead of 1.28 to 1); a near tie keeps its label, reported as a
  tie (the shown class 1e-4 ahead).
* ``hmm``: a sticky forward filter over the 7 classes decides the *label*; the reported *probabilities* are a
  calibrated estimate (below). The transition matrix per reference step (``ref_dt_s`` = 1/30 s) is
  ``T = lam * I + (1 - lam) * U`` (U: every entry 1/7): self-transition ``p_stay = lam + (1 - lam) / 7``, the rest
  spread uniformly. ``strength`` maps log-linearly to the stickiness: ``1 - lam = 10 ** (-4 * strength)``
  (0 -> lam 0, i.e. no memory; 0.25 -> 0.9; 0.5 -> 0.99; 0.75 -> 0.999; 1 -> 0.9999). After ``dt`` seconds the
  matrix is ``T ** (dt / ref_dt) = lam ** (dt / ref_dt) * I + (1 - lam ** (dt / ref_dt)) * U``: exact for this
  family, it is the stickiness ``lam`` that is raised to ``dt / ref_dt`` (raising ``p_stay`` itself would fall
  below 1/7 for long gaps and make them anti-sticky). Emissions are *tempered*: ``belief ∝ (T_dt^T @ belief) *
  p_model ** emission_power`` (``HMM_EMISSION_POWER`` = 0.5). Consecutive frames of one face are far from
  independent evidence (a misread face is misread on every frame), so the untempered product piles up evidence
  that is not there and the filtered belief sits at 0.99+ whatever the model's accuracy: the belief is a decision
  about the state, not a class probability. So the HMM reports, per face, the time-aware EMA of the model's
  probabilities (half-life ``ema_half_life(strength)``, which keeps the model's own confidence scale) as its
  probabilities, with the HMM state as the label: where the two disagree (a near tie the filter holds through) the
  state and the estimate's top class share their probability mass, the state 1e-4 ahead.
  Hysteresis: the shown label (kept per track) moves to the belief's top class only when that class leads the
  shown one by ``margin`` in log belief (``HMM_SWITCH_MARGIN`` = 2: odds of e^2 = 7.4), so a near tie that tips
  back and forth for a few frames does not flip the label, while a real change still shows within 8 frames at
  30 fps (6 frames on a weak 0.5 step at 10 classifications per second).

Confidence, and why smoothing must not pile up evidence: the reported probability is meant to be the probability
that the shown label is right. One classification's probabilities are calibrated on the FER+ val crops, large and
trusted labels (the bundle's own temperature; ``benchmarks/val_calibration.py``: ECE 0.023, the NLL-optimal extra
temperature 1.00). Neighbouring frames of one face are not independent observations of it: on the fixture clips a
face's per-frame label equals its label 1 s later on 95% of frames, the top-class log-odds fluctuate with a
correlation of 0.85 from one frame to the next and 0.5 ten frames apart, so a 0.2 s window holds about 1.7
independent observations of those fluctuations, not the 17 that independent frames would give; and the part that
decides whether a face reads right or wrong (a face the model misreads is misread on every frame) is shared by
every frame, so for correctness a window is one observation. A filter that multiplies per-frame likelihoods
counts each frame as new evidence and reports 0.99+ however often it is wrong. So the reported probabilities are
the time-weighted average of the per-frame calibrated probabilities (one pooled observation): neither sharpened
by the number of frames nor flattened afterwards. ``confidence_temperature`` (``T`` >= 1, default 1; the pipeline's
default ``CONFIDENCE_TEMPERATURE`` is 1 too) still divides the smoothed log-probabilities by ``T`` for users who
want flatter output; it changes no label. ``benchmarks/smoothing_stability.py --fixtures`` measures all of this.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtfer.labels import NUM_CLASSES

log = logging.getLogger(__name__)

METHODS = ("none", "ema", "hmm")
#: EMA half-life at strength 1 (the default 0.5 gives 0.2 s; measured: ``benchmarks/classify_rate.py``).
EMA_MAX_HALF_LIFE_S = 0.4
#: HMM: 1 - lam = 10 ** (-HMM_DECADES * strength).
HMM_DECADES = 4.0
#: HMM emission tempering: likelihood = p_model ** HMM_EMISSION_POWER (measured: smoothing_stability.py --fixtures).
HMM_EMISSION_POWER = 0.5
#: HMM hysteresis: the shown label changes only when another class leads it by this much in log belief
#: (``log b_new - log b_shown``; measured: ``benchmarks/smoothing_stability.py --fixtures``).
HMM_SWITCH_MARGIN = 2.0
#: EMA hysteresis: the shown label changes only when another class leads it by this much in log probability of
#: the averaged estimate (measured: ``benchmarks/smoothing_stability.py --fixtures``, step lag within 8 frames).
EMA_SWITCH_MARGIN = 0.25
#: An observation after a gap counts as at most this many reference steps of evidence (a classification every
#: 1/10 s at 30 fps stands for 3 frames; a face unseen for seconds is not trusted more than this).
HMM_MAX_EVIDENCE_STEPS = 4.0
#: Temperature the pipeline applies to smoothed probabilities by default: 1 = none. The per-frame probabilities are
#: calibrated on the FER+ val crops (the bundle's own temperature; ``python benchmarks/val_calibration.py``: the
#: NLL-optimal extra temperature there is 1.00) and smoothing pools correlated frames as one observation (module
#: docstring), so nothing is left to flatten. ``--confidence-temperature T`` still divides log-probabilities by T.
CONFIDENCE_TEMPERATURE = 1.0
#: Probability floor so that a class the model once called impossible can still take over later.
_PROB_FLOOR = 1e-6


def ema_half_life(strength: float) -> float:
    """EMA half-life in seconds for ``strength`` in [0, 1] (linear: 0 -> 0 s, 0.5 -> 0.2 s, 1 -> 0.4 s)."""
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
    state: np.ndarray  # the method's state: (7,) for ema, (2, 7) belief + estimate for hmm
    last_time: float  # time of the last observation (the next step's dt counts from it)
    output: np.ndarray  # (7,) the probabilities reported for the last observation (calibrated)
    seen: float  # last time the track was observed or held (forgetting counts from it)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale probability rows: ``softmax(log(p) / T)``; T = 1 returns them (renormalised). Keeps the
    argmax; T > 1 lowers the confidence."""
    p = _normalise(probs)
    if temperature == 1.0:
        return p
    logp = np.log(np.maximum(p, _PROB_FLOOR)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    return _normalise(np.exp(logp))


class Smoother:
    """Base: per-track state, forgetting, the id -1 passthrough and output calibration. Subclasses implement
    ``_init``/``_step`` on states and ``_output`` (state -> probabilities).

    Lives on one pipeline thread; not thread-safe by design (no locks needed, STYLE 8).
    """

    method = "none"

    def __init__(self, strength: float = 0.5, *, max_age_s: float = 2.0, ref_dt_s: float = 1 / 30,
                 confidence_temperature: float = 1.0) -> None:
        self.strength = _check_strength(strength)
        if max_age_s <= 0 or ref_dt_s <= 0:
            raise ValueError("max_age_s and ref_dt_s must be positive")
        if not confidence_temperature >= 1.0 or confidence_temperature == float("inf"):
            raise ValueError(f"confidence temperature must be a number >= 1, got {confidence_temperature}")
        self.max_age_s = float(max_age_s)
        self.ref_dt_s = float(ref_dt_s)
        self.confidence_temperature = float(confidence_temperature)
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
        t = self._advance(time_s)
        p = _normalise(p)
        out = calibrate(p, self.confidence_temperature) if self.method != "none" else p.copy()
        rows = np.flatnonzero(ids >= 0)
        if len(rows) == 0:
            return out.astype(np.float32)
        # vectorised over the frame's tracked faces: known tracks step, new ones initialise (a duplicated id is
        # smoothed against the track's previous state twice; the last row's state is kept)
        known = [r for r in rows if int(ids[r]) in self._tracks]
        new = [r for r in rows if int(ids[r]) not in self._tracks]
        states = np.zeros((len(p), *self._state_shape()))
        if known:
            prev = np.stack([self._tracks[int(ids[r])].state for r in known])
            dt = np.array([t - self._tracks[int(ids[r])].last_time for r in known])[:, None]
            dt = np.where(dt > 0, dt, self.ref_dt_s)
            states[known] = self._step(prev, p[known], dt)
        if new:
            states[new] = self._init(p[new])
        out[rows] = self._output(states[rows])
        for r in rows:
            self._tracks[int(ids[r])] = _Track(states[r].copy(), t, out[r].copy(), t)
        return out.astype(np.float32)

    def hold(self, track_ids: np.ndarray, time_s: float) -> np.ndarray:
        """The last reported probabilities of tracks that were not classified on this frame (``--classify-rate``):
        (n, 7) float32, no filter step; NaN rows for ids without state (check :meth:`has` first). Holding counts
        as seeing the track (it is not forgotten), but the next observation's ``dt`` still counts from the last
        observation, so the time-aware step accounts for the whole gap."""
        ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        t = self._advance(time_s)
        out = np.full((len(ids), NUM_CLASSES), np.nan)
        for i, tid in enumerate(ids.tolist()):
            tr = self._tracks.get(tid)
            if tr is not None:
                tr.seen = t
                out[i] = tr.output
        return out.astype(np.float32)

    def label(self, track_id: int) -> int | None:
        """The class index a track shows, or None: the top class of its last reported probabilities (with
        hysteresis, the held label: it is reported on top, :func:`_shown_on_top`)."""
        tr = self._tracks.get(int(track_id))
        return None if tr is None else int(tr.output.argmax())

    def has(self, track_id: int) -> bool:
        """Whether ``track_id`` has live state (its probabilities can be held)."""
        return int(track_id) in self._tracks

    def drop(self, track_ids) -> None:
        """Forget tracks the tracker ended (their faces are gone)."""
        for tid in np.asarray(track_ids, dtype=np.int64).reshape(-1).tolist():
            self._tracks.pop(tid, None)

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
        return (f"{type(self).__name__}(strength={self.strength}, max_age_s={self.max_age_s}, "
                f"confidence_temperature={self.confidence_temperature})")

    # -- internals -----------------------------------------------------------------------------------------------
    def _advance(self, time_s: float) -> float:
        t = float(time_s)
        if self._last_time is not None and t < self._last_time:
            log.debug("time went back from %.3f to %.3f s (seek or new source): smoother state cleared",
                      self._last_time, t)
            self._tracks.clear()
        self._last_time = t
        stale = [tid for tid, tr in self._tracks.items() if t - tr.seen > self.max_age_s]
        for tid in stale:
            del self._tracks[tid]
        return t

    def _state_shape(self) -> tuple[int, ...]:
        return (NUM_CLASSES,)

    def _init(self, p: np.ndarray) -> np.ndarray:
        return p.copy()

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """States (m, ...), observations (m, 7), elapsed seconds (m, 1) -> new states (m, ...)."""
        return p.copy()

    def _output(self, state: np.ndarray) -> np.ndarray:
        """States (m, ...) -> reported probabilities (m, 7), calibrated."""
        return calibrate(state, self.confidence_temperature)


class NoSmoother(Smoother):
    """Passthrough (renormalised, never calibrated): ``--smoothing none``."""

    method = "none"

    def _output(self, state: np.ndarray) -> np.ndarray:
        return _normalise(state)


class EMASmoother(Smoother):
    """Time-aware exponential moving average: ``s <- s + alpha * (p - s)``, ``alpha = 1 - 0.5 ** (dt / half_life)``,
    with hysteresis on the shown label. State per track: ``[estimate, shown label (one-hot)]``."""

    method = "ema"

    def __init__(self, strength: float = 0.5, *, margin: float = EMA_SWITCH_MARGIN, **kwargs) -> None:
        super().__init__(strength, **kwargs)
        self.half_life_s = ema_half_life(self.strength)
        self.margin = _check_margin(margin) if self.strength > 0 else 0.0

    def alpha(self, dt):
        """Weight of a new observation ``dt`` seconds (a float or an array) after the previous one."""
        return _ema_alpha(dt, self.half_life_s)

    def _state_shape(self) -> tuple[int, ...]:
        return (2, NUM_CLASSES)

    def _init(self, p: np.ndarray) -> np.ndarray:
        return np.stack([p, np.eye(NUM_CLASSES)[p.argmax(axis=1)]], axis=1)

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        a = self.alpha(dt)
        estimate = (1.0 - a) * state[:, 0] + a * p
        shown = _hysteresis(estimate, state[:, 1].argmax(axis=1), self.margin)
        return np.stack([estimate, np.eye(NUM_CLASSES)[shown]], axis=1)

    def _output(self, state: np.ndarray) -> np.ndarray:
        return _shown_on_top(calibrate(state[:, 0], self.confidence_temperature), state[:, 1].argmax(axis=1))


def _check_margin(margin: float) -> float:
    if not 0.0 <= margin < float("inf"):
        raise ValueError(f"margin must be a number >= 0, got {margin}")
    return float(margin)


def _hysteresis(scores: np.ndarray, shown: np.ndarray, margin: float) -> np.ndarray:
    """The label each row shows next: its top class in ``scores`` (m, 7) once that class leads the ``shown`` one by
    ``margin`` in log score, else the shown one (a near tie that tips back and forth keeps the label it had)."""
    top = scores.argmax(axis=1)
    rows = np.arange(len(scores))
    lead = np.log(np.maximum(scores[rows, top], _PROB_FLOOR)) - np.log(np.maximum(scores[rows, shown], _PROB_FLOOR))
    return np.where(lead >= margin, top, shown)


def _shown_on_top(q: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Probabilities ``q`` (m, 7) whose top class is ``label``: where another class leads (a near tie the
    hysteresis holds through) the two share their mass, the shown class ``_TIE_GAP`` ahead."""
    q = q.copy()
    top = q.argmax(axis=1)
    for i in np.flatnonzero(label != top):
        s, k = label[i], top[i]
        mid = (q[i, s] + q[i, k]) / 2
        q[i, s], q[i, k] = mid + _TIE_GAP / 2, mid - _TIE_GAP / 2
    return q


def _ema_alpha(dt, half_life_s: float):
    if half_life_s <= 0:
        return np.ones_like(np.asarray(dt, dtype=np.float64))
    return 1.0 - 0.5 ** (np.asarray(dt, dtype=np.float64) / half_life_s)


class HMMSmoother(Smoother):
    """Sticky forward filter with tempered emissions for the label; the EMA estimate for the probabilities (see the
    module docstring). State per track: ``[belief, estimate]``."""

    method = "hmm"

    def __init__(self, strength: float = 0.5, *, emission_power: float = HMM_EMISSION_POWER,
                 margin: float = HMM_SWITCH_MARGIN, **kwargs) -> None:
        super().__init__(strength, **kwargs)
        if not 0.0 < emission_power <= 1.0:
            raise ValueError(f"emission_power must be in (0, 1], got {emission_power}")
        _check_margin(margin)
        self.lam = hmm_lambda(self.strength)
        self.p_stay = hmm_p_stay(self.strength)
        self.emission_power = float(emission_power)
        # strength 0 keeps no memory, so no hysteresis either (every method passes the model through at 0)
        self.margin = float(margin) if self.strength > 0 else 0.0
        self.half_life_s = ema_half_life(self.strength)

    def transition(self, dt: float) -> np.ndarray:
        """(7, 7) transition matrix for a gap of ``dt`` seconds: ``lam**(dt/ref_dt) I + (1 - lam**(dt/ref_dt)) U``."""
        lam = self.lam ** (dt / self.ref_dt_s) if self.lam > 0 else 0.0
        return lam * np.eye(NUM_CLASSES) + (1.0 - lam) / NUM_CLASSES

    def likelihood(self, p: np.ndarray, steps: np.ndarray | float = 1.0) -> np.ndarray:
        """Tempered emission ``p ** (emission_power * steps)`` (divided by the flat prior's, which cancels on
        normalising). ``steps``: reference steps the observation stands for (``dt / ref_dt``, at most
        ``HMM_MAX_EVIDENCE_STEPS``), so the evidence per second does not depend on how often a face is classified
        (``--classify-rate``) while the transition leaks over the same gap."""
        return np.maximum(p, _PROB_FLOOR) ** (self.emission_power * np.minimum(steps, HMM_MAX_EVIDENCE_STEPS))

    def belief(self, track_id: int) -> np.ndarray | None:
        """The filtered state belief of a track (7,), or None."""
        tr = self._tracks.get(int(track_id))
        return None if tr is None else tr.state[0].copy()

    def _state_shape(self) -> tuple[int, ...]:
        return (3, NUM_CLASSES)

    def _init(self, p: np.ndarray) -> np.ndarray:
        # flat prior times the first likelihood; the estimate starts at the observation; the shown label is the
        # belief's top class
        belief = _normalise(self.likelihood(p))
        return np.stack([belief, p, np.eye(NUM_CLASSES)[belief.argmax(axis=1)]], axis=1)

    def _step(self, state: np.ndarray, p: np.ndarray, dt: np.ndarray) -> np.ndarray:
        lam = self.lam ** (dt / self.ref_dt_s) if self.lam > 0 else 0.0
        predicted = lam * state[:, 0] + (1.0 - lam) / NUM_CLASSES  # == transition(dt).T @ belief (T symmetric)
        belief = _normalise(predicted * self.likelihood(p, np.maximum(dt / self.ref_dt_s, 1.0)))
        a = _ema_alpha(dt, self.half_life_s)
        estimate = (1.0 - a) * state[:, 1] + a * p
        # hysteresis: the shown label moves to the belief's top class only once that class leads the shown one by
        # the margin (in log belief); a near tie that tips back and forth keeps the label it had
        shown = _hysteresis(belief, state[:, 2].argmax(axis=1), self.margin)
        return np.stack([belief, estimate, np.eye(NUM_CLASSES)[shown]], axis=1)

    def _output(self, state: np.ndarray) -> np.ndarray:
        # a near tie the filter holds through is reported as one
        return _shown_on_top(calibrate(state[:, 1], self.confidence_temperature), state[:, 2].argmax(axis=1))


#: Gap by which the HMM's state leads a class it ties with (survives the CSV's 4 decimals).
_TIE_GAP = 1e-4


_REGISTRY: dict[str, Callable[..., Smoother]] = {"none": NoSmoother, "ema": EMASmoother, "hmm": HMMSmoother}


def make_smoother(method: str = "ema", strength: float = 0.5, **kwargs) -> Smoother:
    """Create a smoother: ``method`` in {"none", "ema", "hmm"}; ``kwargs``: ``max_age_s``, ``ref_dt_s``,
    ``confidence_temperature``, ``margin`` (ema and hmm) and ``emission_power`` (hmm)."""
    key = str(method).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown smoothing method {method!r}; choose from {', '.join(METHODS)}")
    return _REGISTRY[key](strength, **kwargs)
