"""Linear probes on frozen backbone features (``python -m rtfer.training probe``): screen a pretrained backbone, its
layers and input sizes on the expression task before spending CPU-hours fine-tuning it.

For each input size and crop, the backbone's pooled stage features are computed once for a (stratified) subset of
the training split and for the whole validation split; a multinomial logistic regression on standardised features
(scikit-learn, ``C`` chosen on a held-back part of the training subset) is fitted per feature set and scored on
validation: accuracy, mean-class accuracy and seconds per image for the forward pass. The table is written as
Markdown and JSON.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class ProbeRow:
    backbone: str
    size: int
    crop: float
    features: str
    dims: int
    C: float
    accuracy: float
    mean_class_accuracy: float
    ms_per_image: float


def stratified_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` samples keeping the class shares (all of a split when it is smaller)."""
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(limit * len(idx) / len(labels))))
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def _resized_batches(images: np.ndarray, size: int, crop: float = 1.0, batch: int = 64):
    """``images`` (N, H, W, 1|3 uint8) as float NCHW batches in [0, 1], three channels (grey repeated), centrally
    cropped to ``crop`` of their side and resized to ``size`` (bilinear): what every probe feeds its backbone."""
    import torch
    import torch.nn.functional as F

    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if crop < 1.0:
            h = x.shape[-1]
            m = int(round(h * (1 - crop) / 2))
            x = x[..., m:h - m, m:h - m]
        yield F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _stage_features(model, images: np.ndarray, size: int, crop: float) -> tuple[dict, float]:
    """Pooled features of every trunk stage that runs at ``size`` (and the 128-D embedding when they all do);
    seconds per image."""
    import torch

    from rtfer.models.faceres import DLIB_MEAN, DLIB_STD, stage_sizes

    mean = torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DLIB_STD).view(1, 3, 1, 1)
    feats: dict[str, list[np.ndarray]] = {}
    runnable = sum(1 for h in stage_sizes(size) if h > 0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in _resized_batches(images, size, crop):
            x = (x - mean) / std
            maps = model.trunk.forward_stages(x, upto=runnable)  # small inputs end before the last down block
            for k, fm in enumerate(maps[1:], start=1):
                feats.setdefault(f"stage{k}", []).append(fm.mean(dim=(2, 3)).numpy())
            if len(maps) == len(model.trunk.stages):  # the embedding needs every stage
                feats.setdefault("embed", []).append(model.fc(maps[-1].mean(dim=(2, 3))).numpy())
    dt = (time.perf_counter() - t0) / max(1, len(images))
    out = {k: np.concatenate(v) for k, v in feats.items()}
    if "stage4" in out:
        out["stage2+3+4"] = np.concatenate([out["stage2"], out["stage3"], out["stage4"]], axis=1)
    else:
        out["stage2+3"] = np.concatenate([out["stage2"], out["stage3"]], axis=1)
    return out, dt


def fit_probe(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, seed: int = 0,
              cs=(0.01, 0.1, 1.0)) -> tuple[float, np.ndarray]:
    """Logistic regression on standardised features; ``C`` picked on 20% of the training rows. (C, val probs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    hold = rng.random(len(ytr)) < 0.2
    scaler = StandardScaler().fit(xtr[~hold])
    best = (-1.0, cs[0])
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=300).fit(scaler.transform(xtr[~hold]), ytr[~hold])
        acc = float((clf.predict(scaler.transform(xtr[hold])) == ytr[hold]).mean())
        best = max(best, (acc, c))
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=best[1], max_iter=500).fit(scaler.transform(xtr), ytr)
    probs = np.zeros((len(xva), 7), np.float32)
    probs[:, clf.classes_] = clf.predict_proba(scaler.transform(xva))
    return best[1], probs


def mean_class_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the per-class recalls over the classes present in ``labels``."""
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def run_probe(backbone: str | Path, train: str | Path, val: str | Path, out: str | Path, sizes=(150, 112, 96),
              crops=(1.0,), train_limit: int = 8000, threads: int = 0, seed: int = 0) -> list[ProbeRow]:
    import torch

    from rtfer.models import create_model
    from rtfer.training.data import load_packed

    if threads:
        torch.set_num_threads(threads)
    backbone = Path(backbone)
    if not backbone.is_file():
        raise InputError(f"backbone file {backbone} does not exist (python -m rtfer.training import-backbone)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr, va = load_packed(train), load_packed(val)
    sub = stratified_subset(tr.labels, train_limit, seed)
    model = create_model("faceres29_embed", num_classes=128, pretrained_path=str(backbone)).eval()
    rows: list[ProbeRow] = []
    for size in sizes:
        for crop in crops:
            ftr, dt = _stage_features(model, tr.images[sub], size, crop)
            fva, _ = _stage_features(model, va.images, size, crop)
            rows += _score(backbone.stem, size, crop, ftr, fva, tr.labels[sub], va.labels, dt, seed)
            (out / "probe.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    _write_probe_md(rows, out)
    return rows


def _graph_features(graph, images: np.ndarray, size: int, nodes: list[str],
                    scale: tuple[float, float]) -> tuple[dict, float]:
    """Spatially pooled values of ``nodes`` (4-D maps are averaged over height and width) of a TF.js graph module
    (:mod:`rtfer.training.tfjs_graph`) for ``images`` resized to ``size``; pixels map to ``pixel * scale[0] +
    scale[1]`` (pixel in 0-255)."""
    import torch

    feats: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in _resized_batches(images, size):
            x = (x * (255.0 * scale[0]) + scale[1]).permute(0, 2, 3, 1).contiguous()  # the graph is NHWC
            out = graph(x, outputs=nodes)
            for name in nodes:
                v = out[name]
                pooled = v.mean(dim=(1, 2)) if v.ndim == 4 else v.reshape(len(x), -1)
                feats.setdefault(name, []).append(pooled.numpy())
    dt = (time.perf_counter() - t0) / max(1, len(images))
    return {k: np.concatenate(v) for k, v in feats.items()}, dt


def _score(backbone: str, size: int, crop: float, ftr: dict, fva: dict, ytr: np.ndarray, yva: np.ndarray,
           seconds_per_image: float, seed: int) -> list[ProbeRow]:
    """One probe row per feature set: fitted on ``ftr``, scored on ``fva``; each logged."""
    rows = []
    for name in ftr:
        c, probs = fit_probe(ftr[name], ytr, fva[name], yva, seed)
        pred = probs.argmax(1)
        row = ProbeRow(backbone, size, crop, name, ftr[name].shape[1], c, float((pred == yva).mean()),
                       float(mean_class_accuracy(yva, pred)), seconds_per_image * 1000)
        rows.append(row)
        log.info("probe %s size %d crop %.2f %s: val %.2f%% (mean-class %.2f%%), %.1f ms/img", backbone, size, crop,
                 name, 100 * row.accuracy, 100 * row.mean_class_accuracy, row.ms_per_image)
    return rows


def run_tfjs_probe(model_json: str | Path, train: str | Path, val: str | Path, out: str | Path, nodes: list[str],
                   sizes=(224, 112), scales=((1 / 255, 0.0),), train_limit: int = 8000, threads: int = 0,
                   seed: int = 0) -> list[ProbeRow]:
    """Linear probes on a TF.js graph model's node values (:mod:`rtfer.training.tfjs_graph`), per input size and
    input scaling (which a graph model's file does not record), and on all ``nodes`` concatenated."""
    import torch

    from rtfer.training.data import load_packed
    from rtfer.training.tfjs_graph import build

    if threads:
        torch.set_num_threads(threads)
    graph = build(model_json).eval()
    names = {n["name"] for n in graph.nodes}
    unknown = [n for n in nodes if n not in names]
    if unknown:
        raise InputError(f"{model_json} has no node {unknown[0]!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr, va = load_packed(train), load_packed(val)
    sub = stratified_subset(tr.labels, train_limit, seed)
    stem = Path(model_json).stem
    rows: list[ProbeRow] = []
    for size in sizes:
        for scale in scales:
            ftr, dt = _graph_features(graph, tr.images[sub], size, nodes, scale)
            fva, _ = _graph_features(graph, va.images, size, nodes, scale)
            if len(nodes) > 1:
                ftr["all"] = np.concatenate([ftr[n] for n in nodes], axis=1)
                fva["all"] = np.concatenate([fva[n] for n in nodes], axis=1)
            rows += _score(f"{stem} (x*{scale[0]:.4g}{scale[1]:+g})", size, 1.0, ftr, fva, tr.labels[sub], va.labels,
                           dt, seed)
            (out / "probe.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    _write_probe_md(rows, out)
    return rows


def _write_probe_md(rows: list[ProbeRow], out: Path) -> None:
    lines = ["| backbone | size | crop | features | dims | C | val acc % | mean-class % | ms/img (fwd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.backbone} | {r.size} | {r.crop:.2f} | {r.features} | {r.dims} | {r.C:g} | "
                     f"{100 * r.accuracy:.2f} | {100 * r.mean_class_accuracy:.2f} | {r.ms_per_image:.1f} |")
    (out / "probe.md").write_text("\n".join(lines) + "\n")
