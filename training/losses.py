"""Losses: cross-entropy with label smoothing, soft targets and class weights; DDAMFN's attention-diversity loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(counts: np.ndarray, mode: str = "balanced") -> np.ndarray:
    """Per-class loss weights from training counts: 'balanced' (n / (k * count)), 'sqrt', or 'none' (ones)."""
    counts = np.asarray(counts, np.float64)
    if mode == "none":
        return np.ones(len(counts), np.float32)
    safe = np.maximum(counts, 1.0)
    if mode == "balanced":
        w = counts.sum() / (len(counts) * safe)
    elif mode == "sqrt":
        w = np.sqrt(counts.sum() / (len(counts) * safe))
    else:
        raise ValueError(f"class weight mode must be none, balanced or sqrt, got {mode!r}")
    w[counts == 0] = 0.0
    return w.astype(np.float32)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None = None, *,
                        label_smoothing: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy against soft targets when given (vote distributions), else hard labels.

    Label smoothing mixes the target with the uniform distribution; class weights scale each sample's loss by the
    weight of its target (expected weight for soft targets) and the mean is normalised by the weights' sum.
    """
    logits = logits.float()
    k = logits.shape[-1]
    target = soft.float() if soft is not None else F.one_hot(labels, k).float()
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
    per_sample = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    if weights is None:
        return per_sample.mean()
    w = (target * weights.to(logits).view(1, -1)).sum(-1)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    t = float(temperature)
    target = F.softmax(teacher.float() / t, dim=-1)
    return F.kl_div(F.log_softmax(student.float() / t, dim=-1), target, reduction="batchmean") * t * t


def attention_diversity_loss(heads: list[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """DDAMFN's attention loss: (number of head pairs) / (sum of pairwise MSEs). Pushes the heads apart."""
    if len(heads) < 2:
        return heads[0].new_zeros(()) if heads else torch.zeros(())
    total, count = 0.0, 0
    for i in range(len(heads) - 1):
        for j in range(i + 1, len(heads)):
            total = total + F.mse_loss(heads[i].float(), heads[j].float())
            count += 1
    return count / (total + eps)


__all__ = ["attention_diversity_loss", "class_weights", "classification_loss", "distillation_loss"]
