"""Per-frame calibration of a bundle on the FER+ val crops (large, trusted labels): is one classification's
confidence the probability that its label is right?

Runs the bundle (as the runtime runs it: onnxruntime on CPU, the shipped precision) on every FER+ val image
(``../shared/data/fer2013/val`` with the FER+ majority labels from ``../shared/data/ferplus``), for each combiner,
caches the probabilities (``~/.cache/rtfer/val_probs/``) and prints per combiner: accuracy, mean confidence, ECE
(10 bins), AUROC of confidence for right vs wrong, NLL, the temperature that would minimise the NLL on top of the
bundle's own (5-fold cross-fitted: the ECE at the fold temperatures), and a reliability table. Then the valence of
the crops whose FER+ majority is neutral, per combiner (as rtfer computes it, through the combiner's posterior
shift) beside the annotators' own: the same formula applied to each crop's FER+ vote distribution.

    python benchmarks/val_calibration.py [--bundle default] [--combiners default,balanced]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "rtfer" / "val_probs"


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` vs the rest (ties count half; NaN if a side is empty)."""
    score = np.asarray(score, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def val_probs(bundle: str = "default", combiner: str = "default", cache: Path = DEFAULT_CACHE,
              data: Path = SHARED) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, 7), FER+ majority labels (n,)) on the val split, cached per bundle version and combiner."""
    from rtfer.bundle import load_bundle

    b = load_bundle(bundle, backend="onnxruntime", device="cpu", combiner=combiner)
    path = Path(cache) / f"{b.spec.name}-{b.spec.version}-{combiner}.npz".replace("/", "_")
    if not path.exists():
        from rtfer.training.data import decode_images, read_ferplus

        index = read_ferplus(data / "ferplus" / "fer2013_ferplus_votes.csv", data / "fer2013", "val")
        gray = decode_images(index.paths, size=48, progress=False)
        rgb = np.repeat(gray.reshape(len(gray), 48, 48, 1), 3, axis=3)
        probs = np.concatenate([b.combine(b.member_probs(rgb[i:i + 256])) for i in range(0, len(rgb), 256)])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, probs=probs, labels=np.asarray(index.labels))
    d = np.load(path)
    return d["probs"].astype(np.float64), d["labels"]


def figures(probs: np.ndarray, labels: np.ndarray) -> dict:
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parent))
    from classify_rate import expected_calibration_error

    from rtfer.smoothing import calibrate

    conf, right = probs.max(1), probs.argmax(1) == labels

    def nll(p, y, t):
        return float(-np.mean(np.log(calibrate(p, t)[np.arange(len(y)), y] + 1e-12)))

    grid = np.arange(0.5, 3.001, 0.02)
    folds = np.arange(len(labels)) % 5
    held = np.zeros_like(probs)
    temps = []
    for k in range(5):
        tr, te = folds != k, folds == k
        t = float(min(grid, key=lambda g: nll(probs[tr], labels[tr], g)))
        temps.append(t)
        held[te] = _calibrate_any(probs[te], t)
    return {"n": len(labels), "accuracy": float(right.mean()), "mean_conf": float(conf.mean()),
            "ece": expected_calibration_error(conf, right), "auroc": auroc(conf, right),
            "nll": nll(probs, labels, 1.0), "t_fit": float(np.median(temps)),
            "ece_t_cv": expected_calibration_error(held.max(1), held.argmax(1) == labels)}


def _calibrate_any(p: np.ndarray, t: float) -> np.ndarray:
    logp = np.log(np.maximum(p, 1e-9)) / t
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    conf, right = probs.max(1), probs.argmax(1) == labels
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    return [{"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "share": float((idx == b).mean()),
             "mean_conf": float(conf[idx == b].mean()), "accuracy": float(right[idx == b].mean())}
            for b in range(bins) if (idx == b).any()]


def neutral_valence(values: np.ndarray, labels: np.ndarray) -> dict:
    """Mean, median and spread of ``values`` over the crops whose majority label is neutral."""
    from rtfer.labels import CLASSES

    v = np.asarray(values, np.float64)[np.asarray(labels) == CLASSES.index("neutral")]
    return {"neutral_crops": len(v), "valence_mean": float(v.mean()), "valence_median": float(np.median(v)),
            "below_-0.1": float((v < -0.1).mean()), "above_+0.1": float((v > 0.1).mean())}


def vote_distributions(data: Path = SHARED) -> np.ndarray:
    """The FER+ vote distributions of the val crops, in the order :func:`val_probs` reads them."""
    from rtfer.training.data import read_ferplus

    return read_ferplus(data / "ferplus" / "fer2013_ferplus_votes.csv", data / "fer2013", "val").soft


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--combiners", default="default,balanced")
    ap.add_argument("--data", type=Path, default=SHARED, help="folder with fer2013/ and ferplus/")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smoothing_stability import format_table

    from rtfer.bundle import BundleSpec, resolve_bundle_path
    from rtfer.labels import valence

    spec = BundleSpec.read(resolve_bundle_path(a.bundle))
    rows, calm = [], []
    for name in [c.strip() for c in a.combiners.split(",") if c.strip()]:
        probs, labels = val_probs(a.bundle, name, data=a.data)
        rows.append({"combiner": name, **figures(probs, labels)})
        calm.append({"source": f"combiner {name}", **neutral_valence(valence(probs, spec.posterior_shift(name)),
                                                                     labels)})
        print(f"# reliability, combiner {name}")
        print(format_table(reliability(probs, labels)))
        print()
    calm.append({"source": "FER+ annotators (votes, single-vote outliers dropped)",
                 **neutral_valence(valence(vote_distributions(a.data)), labels)})
    print(f"# FER+ val, bundle {a.bundle}: per-frame calibration")
    print(format_table(rows))
    print()
    print("# valence of the crops whose FER+ majority is neutral: the bundle (through each combiner's posterior shift)")
    print("# and the annotators' own vote distributions")
    print(format_table(calm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
