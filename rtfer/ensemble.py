"""Combining member outputs: soft vote (weights) or logistic-regression stacking, applied in numpy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtfer.labels import NUM_CLASSES


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _class_bias(bias) -> np.ndarray | None:
    """``class_bias`` (7 finite log-probability offsets added to a combiner's logits before its temperature) or None."""
    if bias is None:
        return None
    try:
        b = np.asarray(bias, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        b = np.zeros(0)
    if b.shape != (NUM_CLASSES,) or not np.all(np.isfinite(b)):
        raise ValueError(f"class_bias must be {NUM_CLASSES} finite numbers, got {bias!r}")
    return b


@dataclass
class SoftVote:
    """Weighted mean of member probabilities; ``temperature`` rescales the log of the result, after ``class_bias``
    (optional log-probability offsets per class, e.g. a tilt towards rare classes) is added to it."""

    weights: np.ndarray
    temperature: float = 1.0
    class_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if np.any(self.weights < 0) or self.weights.sum() <= 0:
            raise ValueError(f"soft-vote weights must be non-negative and not all zero, got {self.weights.tolist()}")
        self.weights = self.weights / self.weights.sum()
        self.class_bias = _class_bias(self.class_bias)

    def __call__(self, member_probs: list[np.ndarray]) -> np.ndarray:
        if len(member_probs) != len(self.weights):
            raise ValueError(f"soft vote has {len(self.weights)} weights but got {len(member_probs)} members")
        p = sum(w * np.asarray(m, dtype=np.float64) for w, m in zip(self.weights, member_probs))
        if self.class_bias is not None:
            return softmax(np.log(np.clip(p, 1e-12, None)) + self.class_bias, self.temperature)
        if self.temperature != 1.0:
            return softmax(np.log(np.clip(p, 1e-12, None)), self.temperature)
        return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict:
        d = {"method": "soft_vote", "weights": self.weights.tolist()}
        if self.class_bias is not None:
            d["class_bias"] = self.class_bias.tolist()
        return d


@dataclass
class LogisticStacker:
    """Multinomial logistic regression over the concatenated member probabilities (n, 7*M)."""

    coef: np.ndarray  # (7, 7*M)
    intercept: np.ndarray  # (7,)
    temperature: float = 1.0
    class_bias: np.ndarray | None = None  # added to the logits, like the intercept (kept apart: it is a choice)

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        if self.coef.ndim != 2 or self.coef.shape[0] != NUM_CLASSES or self.coef.shape[1] % NUM_CLASSES:
            raise ValueError(f"stacker coef must be ({NUM_CLASSES}, {NUM_CLASSES}*members), got {self.coef.shape}")
        if self.intercept.shape != (NUM_CLASSES,):
            raise ValueError(f"stacker intercept must be ({NUM_CLASSES},), got {self.intercept.shape}")
        self.class_bias = _class_bias(self.class_bias)

    @property
    def num_members(self) -> int:
        return self.coef.shape[1] // NUM_CLASSES

    def features(self, member_probs: list[np.ndarray]) -> np.ndarray:
        if len(member_probs) != self.num_members:
            raise ValueError(f"stacker expects {self.num_members} members, got {len(member_probs)}")
        return np.concatenate([np.asarray(m, dtype=np.float64) for m in member_probs], axis=-1)

    def __call__(self, member_probs: list[np.ndarray]) -> np.ndarray:
        x = self.features(member_probs)
        z = x @ self.coef.T + self.intercept
        return softmax(z if self.class_bias is None else z + self.class_bias, self.temperature)

    def to_dict(self) -> dict:
        d = {"method": "logistic", "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
        if self.class_bias is not None:
            d["class_bias"] = self.class_bias.tolist()
        return d


Ensemble = SoftVote | LogisticStacker


def make_ensemble(spec: dict, num_members: int, temperature: float = 1.0) -> Ensemble:
    """Build the combiner described by bundle.json's ``ensemble`` object."""
    method = spec.get("method", "soft_vote")
    if method == "soft_vote":
        weights = spec.get("weights") or [1.0] * num_members
        ens: Ensemble = SoftVote(np.asarray(weights), temperature, spec.get("class_bias"))
        if len(ens.weights) != num_members:
            raise ValueError(f"ensemble has {len(ens.weights)} weights for {num_members} members")
        return ens
    if method == "logistic":
        ens = LogisticStacker(np.asarray(spec["coef"]), np.asarray(spec["intercept"]), temperature,
                              spec.get("class_bias"))
        if ens.num_members != num_members:
            raise ValueError(f"stacker was fitted on {ens.num_members} members, bundle has {num_members}")
        return ens
    raise ValueError(f"unknown ensemble method {method!r} (expected 'soft_vote' or 'logistic')")


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature minimising validation NLL (golden-section search on log T; NLL is unimodal in T)."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))
