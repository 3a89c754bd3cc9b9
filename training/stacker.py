"""Fitting the ensemble on validation outputs: soft-vote weights (grid search) and logistic-regression stacking
over the concatenated member probabilities (7 x members features), with an ablation table.

The combiners fitted here are exactly rtfer.ensemble's ``SoftVote`` / ``LogisticStacker`` (the same features, the
same softmax), so the runtime reproduces the validation figures. Because the combiner is fitted on the validation
split, the figures reported for fitted combiners are cross-validated on that split (out-of-fold predictions);
the final combiner is then refitted on the whole split.
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rtfer.ensemble import LogisticStacker, SoftVote, softmax
from rtfer.errors import InputError
from rtfer.labels import CLASSES, NUM_CLASSES
from rtfer.training.evaluate import CalibrationError, ClassificationMetrics, fit_temperature, plot_confusion

log = logging.getLogger(__name__)


def score(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    r = ClassificationMetrics().update(probs, labels).compute()
    return {"accuracy": r.accuracy, "mean_class_accuracy": r.mean_class_accuracy}


def recall_by_class(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    r = ClassificationMetrics().update(probs, labels).compute()
    return {c: float(v) for c, v, n in zip(CLASSES, r.recall, r.support) if n}


def weight_grid(num_members: int, step: float = 0.05) -> np.ndarray:
    """All weight vectors on the simplex with the given step (rows sum to 1)."""
    n = int(round(1 / step))
    rows = [c for c in itertools.product(range(n + 1), repeat=num_members - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in rows], np.float64) / n


def fit_soft_vote(member_probs: list[np.ndarray], labels: np.ndarray, metric: str = "mean_class_accuracy",
                  step: float = 0.05) -> SoftVote:
    """The grid weights with the best ``metric``; ties go to the weights closest to uniform."""
    best, best_key = None, None
    uniform = np.full(len(member_probs), 1 / len(member_probs))
    for w in weight_grid(len(member_probs), step):
        p = SoftVote(w)(member_probs)
        s = score(p, labels)
        key = (round(s[metric], 10), round(s["accuracy"], 10), -float(np.abs(w - uniform).sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return SoftVote(best)


def fit_logistic(member_probs: list[np.ndarray], labels: np.ndarray, *, C: float = 1.0,
                 balanced: bool = False, seed: int = 0) -> LogisticStacker:
    """Multinomial logistic regression on the concatenated probabilities -> rtfer's LogisticStacker.

    A class absent from ``labels`` gets a zero row and a very negative intercept (never predicted).
    """
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.asarray(p, np.float64) for p in member_probs], axis=1)
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced" if balanced else None, random_state=seed)
    clf.fit(x, labels)
    coef = np.zeros((NUM_CLASSES, x.shape[1]))
    intercept = np.full(NUM_CLASSES, -30.0)
    if len(clf.classes_) == 2:  # sklearn's binary form: one row for class 1
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], intercept[clf.classes_[0]] = 0.0, 0.0
    else:
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
    return LogisticStacker(coef, intercept)


#: Candidate combiners: name -> (fit function, kwargs).
CANDIDATES = {
    "soft_vote": (fit_soft_vote, {}),
    "logistic": (fit_logistic, {"balanced": False}),
    "logistic_balanced": (fit_logistic, {"balanced": True}),
}
#: What ``choose="auto"`` picks from. The class-balanced stacker trades overall accuracy for mean-class accuracy; a
#: user's video is mostly neutral and happy faces, so it is offered (``choose="logistic_balanced"``), not defaulted.
AUTO_CANDIDATES = ("soft_vote", "logistic")
#: Alternative combiners a bundle carries beside its default (bundle.json ``combiners``; ``rtfer analyze --combiner``):
#: runtime name -> fitted candidate.
ALTERNATIVES = {"balanced": "logistic_balanced"}


def _fit(name: str, member_probs, labels, metric: str, seed: int):
    fn, kw = CANDIDATES[name]
    if fn is fit_soft_vote:
        return fn(member_probs, labels, metric=metric)
    return fn(member_probs, labels, seed=seed, **kw)


def cross_validated(name: str, member_probs: list[np.ndarray], labels: np.ndarray, *, folds: int = 5,
                    metric: str = "mean_class_accuracy", seed: int = 0) -> np.ndarray:
    """Out-of-fold ensemble probabilities: each fold is combined by a combiner fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=NUM_CLASSES)
    folds = int(min(folds, counts[counts > 0].min())) if folds > 1 else folds
    if folds < 2:
        raise InputError("cross-validation needs at least 2 validation images of every present class")
    out = np.zeros((len(labels), NUM_CLASSES))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels):
        ens = _fit(name, [p[tr] for p in member_probs], labels[tr], metric, seed)
        out[te] = ens([p[te] for p in member_probs])
    return out


@dataclass
class StackerFit:
    chosen: str
    ensemble: dict  # bundle.json's "ensemble" object
    temperature: float  # ensemble-level temperature (bundle.json "temperature")
    member_names: list[str]
    member_temperatures: list[float]
    ablation: list[dict]
    metric: str
    folds: int
    metrics: dict = field(default_factory=dict)  # for bundle.json: per member and ensemble, validation
    alternatives: dict = field(default_factory=dict)  # bundle.json "combiners": name -> combiner, temperature, metrics

    def to_dict(self) -> dict:
        return asdict(self)


def fit_ensemble(member_probs: list[np.ndarray], labels: np.ndarray, names: list[str], *, choose: str = "auto",
                 metric: str = "accuracy", folds: int = 5, seed: int = 0,
                 member_temperatures: list[float] | None = None) -> StackerFit:
    """Ablation (each member, equal soft vote, fitted combiners cross-validated) and the chosen final combiner."""
    labels = np.asarray(labels, np.int64)
    if len({len(p) for p in member_probs}) != 1 or len(member_probs[0]) != len(labels):
        raise InputError("member outputs and labels must cover the same validation images")
    if metric not in ("accuracy", "mean_class_accuracy"):
        raise ValueError(f"metric must be accuracy or mean_class_accuracy, got {metric!r}")
    rows = [{"method": f"member:{n}", "fitted": False, **score(p, labels)} for n, p in zip(names, member_probs)]
    rows.append({"method": "soft_vote_equal", "fitted": False,
                 **score(SoftVote(np.ones(len(member_probs)))(member_probs), labels)})
    oofs, finals = {}, {}
    for name in CANDIDATES:
        oof = oofs[name] = cross_validated(name, member_probs, labels, folds=folds, metric=metric, seed=seed)
        final = finals[name] = _fit(name, member_probs, labels, metric, seed)
        in_sample = score(final(member_probs), labels)
        row = {"method": name, "fitted": True, **score(oof, labels),
               "in_sample_accuracy": in_sample["accuracy"],
               "in_sample_mean_class_accuracy": in_sample["mean_class_accuracy"]}
        if isinstance(final, SoftVote):
            row["weights"] = final.weights.tolist()
        rows.append(row)
    fitted = {r["method"]: r for r in rows if r["fitted"]}
    if choose == "auto":
        chosen = max(AUTO_CANDIDATES, key=lambda k: (fitted[k][metric], fitted[k]["accuracy"]))
    elif choose in CANDIDATES:
        chosen = choose
    else:
        raise ValueError(f"choose must be auto, soft_vote, logistic or logistic_balanced, got {choose!r}")
    final = finals[chosen]
    temperature, ece = _tempered(oofs[chosen], labels)
    alternatives = {}
    for alt, candidate in ALTERNATIVES.items():
        if candidate == chosen:
            continue
        t, e = _tempered(oofs[candidate], labels)
        shift = fit_posterior_shift(softmax(np.log(np.clip(oofs[candidate], 1e-12, None)), t), labels)
        alternatives[alt] = {**finals[candidate].to_dict(), "temperature": t, "fitted_as": candidate,
                             "posterior_shift": shift.tolist(),
                             "metrics": {"cross_validated": True, "folds": folds,
                                         "accuracy": fitted[candidate]["accuracy"],
                                         "mean_class_accuracy": fitted[candidate]["mean_class_accuracy"],
                                         "recall": recall_by_class(oofs[candidate], labels),
                                         "ece": e["before"], "ece_tempered": e["after"]}}
    metrics = {"split": "validation",
               "members": {n: {**score(p, labels), "recall": recall_by_class(p, labels)}
                           for n, p in zip(names, member_probs)},
               "ensemble": {"method": chosen, "cross_validated": True, "folds": folds,
                            "accuracy": fitted[chosen]["accuracy"],
                            "mean_class_accuracy": fitted[chosen]["mean_class_accuracy"],
                            "recall": recall_by_class(oofs[chosen], labels),
                            "confusion": ClassificationMetrics().update(oofs[chosen], labels).compute().confusion,
                            "ece": ece["before"], "ece_tempered": ece["after"], "temperature": float(temperature)},
               "count": int(len(labels))}
    return StackerFit(chosen=chosen, ensemble=final.to_dict(), temperature=float(temperature), member_names=list(names),
                      member_temperatures=list(member_temperatures or [1.0] * len(names)), ablation=rows,
                      metric=metric, folds=folds, metrics=metrics, alternatives=alternatives)


def fit_posterior_shift(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 7 log-probability offsets ``b`` (mean 0) that make ``softmax(log probs + b)`` fit ``labels`` best (NLL,
    L-BFGS; mean 0 over the classes in ``labels``, a class absent from them keeps 0). For a combiner that answers as if every class were equally
    common (``balanced``), ``b`` takes its output back to the class frequencies of the validation data; the
    runtime computes valence through it (``rtfer.labels.valence``), so a calm face does not lean negative just
    because four of the seven classes are negative and rare."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None))
    labels = np.asarray(labels, np.int64)
    present = np.bincount(labels, minlength=NUM_CLASSES) > 0
    onehot = np.eye(NUM_CLASSES)[labels]

    def nll_grad(b):
        z = logp + np.where(present, b, 0.0)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        nll = -float(np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-300))))
        return nll, np.where(present, (p - onehot).mean(axis=0), 0.0)

    b = minimize(nll_grad, np.zeros(NUM_CLASSES), jac=True, method="L-BFGS-B").x
    return np.where(present, b - b[present].mean(), 0.0)


def _choose_tilt(logp: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, grid: np.ndarray,
                 max_drop: float) -> float:
    """The tilt with the best mean-class accuracy among those that lose at most ``max_drop`` of the untilted
    accuracy (ties: the smaller tilt)."""
    base = score(logp, labels)["accuracy"]
    best, best_mc = 0.0, -1.0
    for a in grid:
        s = score(logp - a * log_prior, labels)
        if s["accuracy"] >= base - max_drop - 1e-12 and s["mean_class_accuracy"] > best_mc + 1e-12:
            best, best_mc = float(a), s["mean_class_accuracy"]
    return best


def fit_prior_tilt(probs: np.ndarray, labels: np.ndarray, prior: np.ndarray, *, max_drop: float = 0.002,
                   folds: int = 5, seed: int = 0, grid: np.ndarray | None = None) -> tuple[float, dict]:
    """How far to tilt a combiner's output towards rare classes: ``log p - alpha * log prior`` (post-hoc logit
    adjustment by the training data's class frequencies ``prior``; alpha 1 would answer as if every class were
    equally common, like the class-balanced stacker). alpha is the one, on ``grid``, with the best mean-class accuracy
    among those that lose at most ``max_drop`` (0.2 points: a few images in a thousand, within the noise of a val
    split) of the untilted accuracy on ``labels``. Returns (alpha, metrics): the metrics are cross-validated, alpha
    chosen on ``folds - 1`` folds and applied to the held-out one."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None))
    labels = np.asarray(labels, np.int64)
    prior = np.asarray(prior, np.float64)
    if prior.shape != (NUM_CLASSES,) or np.any(prior <= 0):
        raise InputError(f"class frequencies must be {NUM_CLASSES} positive numbers, got {prior.tolist()}")
    log_prior = np.log(prior / prior.sum())
    grid = np.round(np.arange(0.0, 1.0001, 0.05), 2) if grid is None else np.asarray(grid, np.float64)
    alpha = _choose_tilt(logp, labels, log_prior, grid, max_drop)
    fold = np.random.default_rng(seed).permutation(len(labels)) % folds
    oof = np.empty_like(logp)  # each fold tilted by the alpha the other folds chose
    chosen = []
    for f in range(folds):
        fit, held = fold != f, fold == f
        a = _choose_tilt(logp[fit], labels[fit], log_prior, grid, max_drop)
        chosen.append(a)
        oof[held] = logp[held] - a * log_prior
    return alpha, {"cross_validated": True, "folds": folds, **score(oof, labels),
                   "recall": recall_by_class(oof, labels), "fold_alphas": chosen, "max_drop": max_drop,
                   "untilted": score(logp, labels)}


def _tempered(oof: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
    """Temperature on the out-of-fold log-probabilities (softmax(log p / T) rescales the combiner's logits), so it
    is fitted on predictions the combiner did not see (accuracy is unchanged); ECE before and after."""
    logp = np.log(np.clip(oof, 1e-12, None))
    t = fit_temperature(logp, labels)
    return float(t), {"before": _ece(oof, labels), "after": _ece(softmax(logp, t), labels)}


def _ece(probs: np.ndarray, labels: np.ndarray) -> float:
    return CalibrationError().update(probs, labels).compute().ece


def ablation_markdown(fit: StackerFit) -> str:
    lines = [f"# Ensemble ablation (validation, {fit.metrics['count']} images)", "",
             f"Fitted combiners: {fit.folds}-fold cross-validated on validation (out-of-fold predictions); "
             f"in-sample figures beside them. Chosen by {fit.metric}: **{fit.chosen}**.", "",
             "| method | accuracy | mean-class accuracy | in-sample accuracy | in-sample mean-class |",
             "|---|---|---|---|---|"]
    for r in fit.ablation:
        ins = (f"{r['in_sample_accuracy']:.4f} | {r['in_sample_mean_class_accuracy']:.4f}" if r["fitted"]
               else "- | -")
        lines.append(f"| {r['method']} | {r['accuracy']:.4f} | {r['mean_class_accuracy']:.4f} | {ins} |")
    ens = fit.metrics.get("ensemble", {})
    if "ece" in ens:
        lines += ["", f"Chosen combiner's calibration (out-of-fold): ECE {ens['ece']:.4f}, "
                      f"{ens['ece_tempered']:.4f} after temperature {ens['temperature']:.3f}."]
    for alt, c in fit.alternatives.items():
        m = c["metrics"]
        lines += ["", f"Alternative combiner `{alt}` ({c['fitted_as']}, `rtfer analyze --combiner {alt}`): accuracy "
                      f"{m['accuracy']:.4f}, mean-class {m['mean_class_accuracy']:.4f} (out-of-fold); ECE "
                      f"{m['ece_tempered']:.4f} after temperature {c['temperature']:.3f}."]
    return "\n".join(lines) + "\n"


def load_member_outputs(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(tempered probabilities, labels, temperature, name) from a training run folder.

    The temperature is the one the run fitted on validation (``val.json``), the same the bundle gives the member,
    so the stacker sees exactly the probabilities the runtime will feed it.
    """
    run_dir = Path(run_dir)
    path = run_dir / "val_logits.npz"
    if not path.is_file():
        raise InputError(f"{path} does not exist (train the member first)")
    with np.load(path) as z:
        logits, labels = z["logits"], z["labels"].astype(np.int64)
    temperature = 1.0
    report = run_dir / "val.json"
    if report.is_file():
        temperature = float(json.loads(report.read_text(encoding="utf-8"))["temperature"])
    name = run_dir.name
    return softmax(logits, temperature), labels, temperature, name


def load_runs(runs: list[str | Path]) -> tuple[list[tuple[np.ndarray, np.ndarray, float, str]], np.ndarray]:
    """:func:`load_member_outputs` of each run and their shared labels; refused unless every run was validated on
    the same images."""
    outputs = [load_member_outputs(r) for r in runs]
    labels = outputs[0][1]
    for (_, lab, _, name) in outputs[1:]:
        if not np.array_equal(lab, labels):
            raise InputError(f"run {name} was validated on different images than {outputs[0][3]}")
    return outputs, labels


def fit_ensemble_from_runs(runs: list[str | Path], out: str | Path, *, choose: str = "auto",
                           metric: str = "accuracy", folds: int = 5, seed: int = 0) -> StackerFit:
    """Fit on the members' saved validation outputs; write ensemble.json, ablation.md and ablation.json."""
    outputs, labels = load_runs(runs)
    fit = fit_ensemble([o[0] for o in outputs], labels, [o[3] for o in outputs], choose=choose, metric=metric,
                       folds=folds, seed=seed, member_temperatures=[o[2] for o in outputs])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**fit.to_dict(), "runs": [str(Path(r)) for r in runs]}
    (out / "ensemble.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "ablation.json").write_text(json.dumps(fit.ablation, indent=2) + "\n", encoding="utf-8")
    (out / "ablation.md").write_text(ablation_markdown(fit), encoding="utf-8")
    ens = fit.metrics["ensemble"]
    plot_confusion(np.asarray(ens["confusion"]), out / "confusion.png",
                   title=f"ensemble ({fit.chosen}, {fit.folds}-fold out-of-fold): acc {ens['accuracy']:.3f}, "
                         f"mean-class {ens['mean_class_accuracy']:.3f}")
    return fit
