"""Cross-validation: folds grouped by source file, held-out scores, cross-fitted temperatures, and
:func:`run_adaptation`, which scores every candidate against the base and picks the one that beats it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.adapt.examples import Examples
from rtfer.adapt.features import MemberFeatures, member_features
from rtfer.adapt.fitting import Params, base_params, blas_single_thread, candidate_fitters, nll
from rtfer.bundle import BUNDLE_FILE, BundleSpec, sha256_file
from rtfer.ensemble import fit_temperature, softmax
from rtfer.errors import InputError
from rtfer.labels import CLASSES, NUM_CLASSES

log = logging.getLogger(__name__)


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Fold index arrays: every source file (group) lies in one fold; each class's files are spread round-robin over
    the folds (a file holds one class), in a seeded random order."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise InputError("adaptation needs examples from at least 2 source files (held-out folds are whole files)")
    folds = int(max(2, min(folds, len(uniq))))
    group_label = {g: int(labels[groups == g][0]) for g in uniq}
    assign = {}
    offset = 0
    for c in range(NUM_CLASSES):
        gs = [g for g in uniq if group_label[g] == c]
        rng.shuffle(gs)
        for i, g in enumerate(gs):
            assign[g] = (offset + i) % folds
        offset += len(gs)  # the next class starts where this one ended, so small classes fill different folds
    fold_of = np.array([assign[g] for g in groups])
    return [np.flatnonzero(fold_of == k) for k in range(folds) if np.any(fold_of == k)]


@dataclass
class Scores:
    accuracy: float
    mean_class_accuracy: float
    recall: dict[str, float]
    nll: float

    @classmethod
    def of(cls, probs: np.ndarray, labels: np.ndarray) -> Scores:
        pred = probs.argmax(1)
        recall = {CLASSES[c]: float(np.mean(pred[labels == c] == c)) for c in range(NUM_CLASSES) if np.any(labels == c)}
        return cls(accuracy=float(np.mean(pred == labels)), mean_class_accuracy=float(np.mean(list(recall.values()))),
                   recall=recall, nll=nll(probs, labels))

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "mean_class_accuracy": self.mean_class_accuracy, "recall": self.recall,
                "nll": self.nll}

    def beats(self, other: Scores, reference_nll: float | None = None) -> bool:
        """Not lower on accuracy or mean-class accuracy, and better on one of them or, at equal accuracies, on the
        log-loss (on ten faces per class one face is ten points of a class: ties are common, and a model whose
        held-out probabilities are better while no accuracy drops is the better model). ``reference_nll`` (the base
        re-calibrated, see :func:`run_adaptation`), when lower than ``other.nll``, is the log-loss to beat: a
        temperature change alone moves no prediction and is not an improvement."""
        eps = 1e-9
        if self.accuracy < other.accuracy - eps or self.mean_class_accuracy < other.mean_class_accuracy - eps:
            return False
        nll_to_beat = other.nll if reference_nll is None else min(other.nll, reference_nll)
        return (self.accuracy > other.accuracy + eps or self.mean_class_accuracy > other.mean_class_accuracy + eps
                or self.nll < nll_to_beat - 1e-3)


def cross_validate(fit, spec, feats, labels, folds: list[np.ndarray]) -> np.ndarray | None:
    """Out-of-fold probabilities (temperature 1) of the candidate ``fit``; None when it does not apply."""
    oof = np.zeros((len(labels), NUM_CLASSES))
    everything = np.arange(len(labels))
    for test in folds:
        train = np.setdiff1d(everything, test)
        present = np.unique(labels[train])
        params = fit(spec, feats, train, labels[train], present)
        if params is None:
            return None
        oof[test] = params.predict(feats, test, temperature=1.0)
    return oof


def cross_fit_temperature(oof: np.ndarray, labels: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold probabilities calibrated without scoring a fitted temperature on the faces it was fitted on:
    each fold's are rescaled by the temperature fitted on the other folds' (themselves out-of-fold) predictions.
    Predictions (the argmax) are unchanged."""
    logp = np.log(np.clip(oof, 1e-12, None))
    out = np.empty_like(oof, dtype=np.float64)
    everything = np.arange(len(labels))
    for test in folds:
        train = np.setdiff1d(everything, test)
        out[test] = softmax(logp[test], fit_temperature(logp[train], labels[train]))
    return out


# -- the result and the run -------------------------------------------------------------------------------------------
@dataclass
class AdaptResult:
    base: BundleSpec
    examples: Examples
    folds: int
    before: Scores
    candidates: dict[str, Scores]
    chosen: str | None
    after: Scores | None
    params: Params | None
    features: list[MemberFeatures] = field(default_factory=list)  # the members on the examples (for the check)
    seconds: float = 0.0
    output: Path | None = None
    base_recalibrated_nll: float | None = None  # held-out log-loss of the base with a cross-fitted temperature

    @property
    def improved(self) -> bool:
        return self.chosen is not None

    def table(self) -> str:
        """Before/after cross-validated accuracy, overall and per class, for the terminal."""
        counts = self.examples.per_class()
        lines = [f"examples: {len(self.examples)} faces from {self.examples.files} files "
                 f"({', '.join(f'{k} {v}' for k, v in self.examples.kinds.items())}); "
                 f"{self.folds}-fold cross-validation grouped by source file"]
        head = f"{'class':<10} {'faces':>5} {'before':>8} {'after':>8}"
        lines += ["", head, "-" * len(head)]
        after = self.after
        for c in CLASSES:
            b = self.before.recall.get(c)
            a = after.recall.get(c) if after else None
            lines.append(f"{c:<10} {counts[c]:>5} {_pc(b):>8} {_pc(a):>8}")
        lines.append("-" * len(head))
        lines.append(f"{'accuracy':<10} {len(self.examples):>5} {_pc(self.before.accuracy):>8} "
                     f"{_pc(after.accuracy if after else None):>8}")
        lines.append(f"{'mean-class':<10} {'':>5} {_pc(self.before.mean_class_accuracy):>8} "
                     f"{_pc(after.mean_class_accuracy if after else None):>8}")
        lines.append(f"{'log-loss':<10} {'':>5} {self.before.nll:>8.3f} "
                     f"{'-' if after is None else f'{after.nll:.3f}':>8}"
                     + ("" if self.base_recalibrated_nll is None
                        else f"   (base re-calibrated: {self.base_recalibrated_nll:.3f})"))
        lines += ["", "candidates (held-out accuracy / mean-class): " + ", ".join(
            f"{k} {_pc(v.accuracy)} / {_pc(v.mean_class_accuracy)}" for k, v in self.candidates.items())]
        if self.chosen:
            lines.append(f"chosen: {self.chosen} (temperature {self.params.temperature:.3f}); "
                         f"adapted in {self.seconds:.1f} s")
        else:
            lines.append(f"no candidate beat the base bundle on the held-out folds; nothing written "
                         f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _pc(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def bundle_hash(spec: BundleSpec) -> str:
    """A bundle's identity: sha256 of its bundle.json (which holds every member file's sha256)."""
    return sha256_file(spec.path / BUNDLE_FILE)


def run_adaptation(spec: BundleSpec, examples: Examples, *, folds: int = 5, seed: int = 0,
                   method: str = "auto") -> AdaptResult:
    """Score the base and every candidate on grouped held-out folds; fit the winner on all examples."""
    with blas_single_thread():
        return _run_adaptation(spec, examples, folds=folds, seed=seed, method=method)


def _run_adaptation(spec: BundleSpec, examples: Examples, *, folds: int, seed: int, method: str) -> AdaptResult:
    t0 = time.perf_counter()
    feats = member_features(spec, examples.crops)
    y = examples.labels
    fold_idx = grouped_folds(y, examples.groups, folds, seed)
    base = base_params(spec, feats)
    before = Scores.of(base.predict(feats), y)
    # The base with its temperature cross-fitted like every candidate's: the log-loss a candidate has to beat.
    base_recalibrated = nll(cross_fit_temperature(base.predict(feats, temperature=1.0), y, fold_idx), y)
    fitters = candidate_fitters()
    if method != "auto":
        chosen_names = [k for k in fitters if k == method or k.split(":")[0] == method]
        if not chosen_names:
            raise InputError(f"unknown adaptation method {method!r}; choose auto, stacker, prior, finetune or one of "
                             f"{', '.join(fitters)}")
        fitters = {k: fitters[k] for k in chosen_names}
    if len(np.unique(y)) < NUM_CLASSES:
        fitters.pop("stacker:logistic", None)  # a stacker fitted from scratch would never predict an absent class
    candidates: dict[str, Scores] = {}
    oofs: dict[str, np.ndarray] = {}
    for name, fit in fitters.items():
        oof = cross_validate(fit, spec, feats, y, fold_idx)
        if oof is None:
            log.info("candidate %s does not apply to this bundle", name)
            continue
        oofs[name] = oof
        candidates[name] = Scores.of(cross_fit_temperature(oof, y, fold_idx), y)
        log.info("candidate %s: held-out accuracy %.3f, mean-class %.3f, nll %.3f", name,
                 candidates[name].accuracy, candidates[name].mean_class_accuracy, candidates[name].nll)
    eligible = [k for k, s in candidates.items() if s.beats(before, base_recalibrated)]
    chosen = max(eligible, key=lambda k: (candidates[k].accuracy, candidates[k].mean_class_accuracy,
                                          -candidates[k].nll)) if eligible else None
    params = after = None
    if chosen:
        present = np.unique(y)
        params = fitters[chosen](spec, feats, np.arange(len(y)), y, present)
        # deployed temperature: fitted on all the held-out predictions (the figures above never saw it)
        params.temperature = fit_temperature(np.log(np.clip(oofs[chosen], 1e-12, None)), y)
        after = candidates[chosen]
    return AdaptResult(base=spec, examples=examples, folds=len(fold_idx), before=before, candidates=candidates,
                       chosen=chosen, after=after, params=params, features=feats, seconds=time.perf_counter() - t0,
                       base_recalibrated_nll=base_recalibrated)
