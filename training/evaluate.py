"""Evaluation metrics (objects with update/reset/compute) and the evaluation report (JSON + Markdown + PNG).

Reported: overall and mean-class accuracy, per-class precision/recall/F1, the confusion matrix, accuracy on the
3-level and 5-level sentiment scales (and seed5, for published comparisons), and the expected calibration error
before and after temperature scaling, with the temperature fitted on the validation split.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rtfer.ensemble import fit_temperature, nll, softmax  # noqa: F401 - nll/fit_temperature used by training
from rtfer.labels import CLASSES, NUM_CLASSES, scale_levels, scale_matrix

log = logging.getLogger(__name__)


@dataclass
class ClassificationResult:
    count: int
    accuracy: float
    mean_class_accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows = true class, columns = predicted
    macro_f1: float = 0.0
    classes: tuple[str, ...] = CLASSES


class ClassificationMetrics:
    """Accumulates a confusion matrix from (probabilities or logits, labels) batches."""

    def __init__(self, num_classes: int = NUM_CLASSES, classes: tuple[str, ...] = CLASSES) -> None:
        self.num_classes = num_classes
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> ClassificationMetrics:
        pred = np.asarray(scores).argmax(-1) if np.ndim(scores) == 2 else np.asarray(scores)
        labels = np.asarray(labels, np.int64)
        if pred.shape != labels.shape:
            raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
        np.add.at(self.confusion, (labels, pred), 1)
        return self

    def compute(self) -> ClassificationResult:
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        support = cm.sum(1)
        predicted = cm.sum(0)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
        n = int(cm.sum())
        present = support > 0
        return ClassificationResult(
            count=n, accuracy=float(tp.sum() / n) if n else 0.0,
            mean_class_accuracy=float(recall[present].mean()) if present.any() else 0.0,
            precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
            support=support.astype(int).tolist(), confusion=self.confusion.tolist(),
            macro_f1=float(f1[present].mean()) if present.any() else 0.0, classes=self.classes)


@dataclass
class ScaleResult:
    scale: str
    levels: tuple[str, ...]
    accuracy: float
    mean_level_accuracy: float
    confusion: list[list[int]]


class ScaleAccuracy:
    """Accuracy after summing class probabilities into the levels of an rtfer.labels scale."""

    def __init__(self, scale: str) -> None:
        self.scale = scale
        self.levels = scale_levels(scale)
        self.matrix = scale_matrix(scale)
        self.level_of_class = self.matrix.argmax(1)
        self.inner = ClassificationMetrics(len(self.levels), self.levels)

    def reset(self) -> None:
        self.inner.reset()

    def update(self, probs: np.ndarray, labels: np.ndarray) -> ScaleAccuracy:
        level_probs = np.asarray(probs, np.float64) @ self.matrix
        self.inner.update(level_probs, self.level_of_class[np.asarray(labels, np.int64)])
        return self

    def compute(self) -> ScaleResult:
        r = self.inner.compute()
        return ScaleResult(self.scale, self.levels, r.accuracy, r.mean_class_accuracy, r.confusion)


@dataclass
class CalibrationResult:
    ece: float
    bins: int
    bin_confidence: list[float]
    bin_accuracy: list[float]
    bin_count: list[int]


class CalibrationError:
    """Expected calibration error of the top-class confidence over equal-width bins."""

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.conf_sum = np.zeros(self.bins)
        self.correct = np.zeros(self.bins)
        self.count = np.zeros(self.bins, np.int64)

    def update(self, probs: np.ndarray, labels: np.ndarray) -> CalibrationError:
        probs = np.asarray(probs, np.float64)
        conf = probs.max(-1)
        hit = probs.argmax(-1) == np.asarray(labels)
        b = np.minimum((conf * self.bins).astype(int), self.bins - 1)
        np.add.at(self.conf_sum, b, conf)
        np.add.at(self.correct, b, hit)
        np.add.at(self.count, b, 1)
        return self

    def compute(self) -> CalibrationResult:
        n = self.count.sum()
        safe = np.maximum(self.count, 1)
        conf = self.conf_sum / safe
        acc = self.correct / safe
        ece = float((self.count * np.abs(acc - conf)).sum() / n) if n else 0.0
        return CalibrationResult(ece, self.bins, conf.tolist(), acc.tolist(), self.count.tolist())


@dataclass
class EvalReport:
    """Everything ``python -m rtfer.training evaluate`` reports for one split."""

    split: str
    classification: ClassificationResult
    scales: dict[str, ScaleResult]
    ece: float
    ece_calibrated: float
    temperature: float
    nll: float
    nll_calibrated: float
    scales_calibrated: dict[str, ScaleResult] = field(default_factory=dict)  # with the temperature applied
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, *, split: str = "val",
                    temperature: float | None = None) -> EvalReport:
    """Full report for one split's logits. ``temperature``: fitted on validation (None = fit on these logits,
    which is what one does when the evaluated split *is* the validation split)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if temperature is None:
        temperature = fit_temperature(logits, labels)
    probs = softmax(logits)
    probs_t = softmax(logits, temperature)
    cls = ClassificationMetrics().update(probs, labels).compute()
    names = ("sentiment3", "sentiment5", "seed5")
    scales = {s: ScaleAccuracy(s).update(probs, labels).compute() for s in names}
    # level sums depend on calibration (the runtime applies the member temperature), so report both
    scales_t = {s: ScaleAccuracy(s).update(probs_t, labels).compute() for s in names}
    return EvalReport(split=split, classification=cls, scales=scales,
                      ece=CalibrationError().update(probs, labels).compute().ece,
                      ece_calibrated=CalibrationError().update(probs_t, labels).compute().ece,
                      temperature=float(temperature), nll=nll(logits, labels),
                      nll_calibrated=nll(logits, labels, temperature), scales_calibrated=scales_t)


def plot_confusion(confusion: np.ndarray, path: str | Path, classes: tuple[str, ...] = CLASSES,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_markdown(report: EvalReport, title: str = "") -> str:
    c = report.classification
    lines = [f"# {title or 'Evaluation'} ({report.split}, {c.count} images)", "",
             f"- overall accuracy: **{c.accuracy:.4f}**", f"- mean-class accuracy: **{c.mean_class_accuracy:.4f}**",
             f"- macro F1: {c.macro_f1:.4f}",
             f"- ECE: {report.ece:.4f} before, {report.ece_calibrated:.4f} after temperature scaling "
             f"(T = {report.temperature:.3f}); NLL {report.nll:.4f} -> {report.nll_calibrated:.4f}", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for i, name in enumerate(c.classes):
        lines.append(f"| {name} | {c.precision[i]:.4f} | {c.recall[i]:.4f} | {c.f1[i]:.4f} | {c.support[i]} |")
    lines += ["", "| scale | accuracy | mean-level accuracy | accuracy (T applied) | mean-level (T applied) |",
              "|---|---|---|---|---|"]
    for s in report.scales.values():
        t = report.scales_calibrated.get(s.scale, s)
        lines.append(f"| {s.scale} ({len(s.levels)} levels) | {s.accuracy:.4f} | {s.mean_level_accuracy:.4f} | "
                     f"{t.accuracy:.4f} | {t.mean_level_accuracy:.4f} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| | " + " | ".join(c.classes) + " |", "|---" * (len(c.classes) + 1) + "|"]
    for name, row in zip(c.classes, c.confusion):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: EvalReport, folder: str | Path, stem: str | None = None, title: str = "") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>_confusion.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or report.split
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "png": folder / f"{stem}_confusion.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(report_markdown(report, title), encoding="utf-8")
    plot_confusion(np.array(report.classification.confusion), paths["png"], title=f"{title} {stem}".strip())
    return paths
