"""Validation outputs of a shipped bundle's members (``python -m rtfer.training member-logits``), so that a new
member can be stacked with them when their training run folders are gone.

Each member runs on onnxruntime exactly as at run time (its ONNX file, its preprocessing, its temperature); the
result is written as a run folder per member that ``fit-stacker`` reads like a training run's: ``val_logits.npz``
(``T * log p``, logits that give the member's tempered probabilities ``p`` back at its temperature ``T``),
``val.json`` (that temperature), and ``best.pt``, a training checkpoint rebuilt from the member's ONNX weights (its
FP16-stored values, exactly), so that ``export`` can put the member into a new bundle.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)


def _checkpoint_from_onnx(spec, member, path: Path) -> None:
    """A training checkpoint (``load_checkpoint`` reads it) holding the member's ONNX weights."""
    import torch

    from rtfer.backends.torch import load_onnx_weights
    from rtfer.models import create_model

    model = create_model(member.architecture, **member.arch_kwargs)
    load_onnx_weights(model, spec.path / member.file)
    cfg = {"input_size": member.input_size, "mean": list(member.mean), "std": list(member.std),
           "color": member.color}
    torch.save({"architecture": member.architecture, "arch_kwargs": dict(member.arch_kwargs),
                "model": model.state_dict(), "default_cfg": cfg, "epoch": None,
                "provenance": {"pretrained_from": member.pretrained_from, "weights_license": member.weights_license,
                               "training_data": member.training_data},
                "source": f"bundle {spec.name} {spec.version} member {member.name}"}, path)


def write_member_logits(bundle: str | Path, data: str | Path, out: str | Path, precision: str = "fp32",
                        batch: int = 256, tta_flip: bool = False) -> list[Path]:
    import rtfer
    from rtfer.training.data import load_split
    from rtfer.training.evaluate import evaluate_logits

    val = load_split(data)
    images = val.images
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1] != images.shape[2]:
        raise InputError(f"{data}: images must be square, got {images.shape[1:3]}")
    b = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", precision=precision)
    b.tta_flip = tta_flip  # each crop and its mirror image, as a combiner fitted on these outputs will run
    outs: list[list[np.ndarray]] = [[] for _ in b.spec.members]
    for i in range(0, len(images), batch):
        for k, p in enumerate(b.member_probs(np.ascontiguousarray(images[i:i + batch]))):
            outs[k].append(p)
    folders = []
    for m, parts in zip(b.spec.members, outs):
        probs = np.concatenate(parts).astype(np.float64)
        logits = (m.temperature * np.log(np.clip(probs, 1e-12, 1.0))).astype(np.float32)
        folder = Path(out) / m.name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "val_logits.npz", logits=logits, labels=val.labels)
        report = evaluate_logits(logits, val.labels, split="val", temperature=m.temperature)
        _checkpoint_from_onnx(b.spec, m, folder / "best.pt")
        source = f"bundle {b.spec.name} {b.spec.version} member {m.name} ({precision}{', flip TTA' if tta_flip else ''})"
        (folder / "val.json").write_text(json.dumps({"temperature": m.temperature, "source": source,
                                                     "tta_flip": tta_flip,
                                                     "accuracy": report.classification.accuracy,
                                                     "mean_class_accuracy":
                                                         report.classification.mean_class_accuracy}, indent=1))
        log.info("%s: val accuracy %.4f, mean-class %.4f -> %s", m.name, report.classification.accuracy,
                 report.classification.mean_class_accuracy, folder)
        folders.append(folder)
    return folders
