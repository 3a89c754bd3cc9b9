"""One training epoch, batched prediction and weight EMA: the pieces the training loop composes.

The same code runs on CPU and CUDA; on CUDA the caller passes ``amp=True`` (bfloat16 autocast, no loss scaler, so
SAM's two passes need no special handling) and channels-last inputs.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from rtfer.training.augment import BatchAugment, to_float
from rtfer.training.data import BatchLoader, Packed
from rtfer.training.feature_distill import student_features
from rtfer.training.losses import attention_diversity_loss, classification_loss, distillation_loss
from rtfer.training.sam import SAM, bn_update

log = logging.getLogger(__name__)


@dataclass
class StepOptions:
    """What one optimisation step needs besides the batch."""

    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    attention_weight: float = 0.1
    soft_targets: bool = False
    grad_clip: float = 0.0
    amp: bool = False
    channels_last: bool = False
    max_steps: int = 0
    progress: bool = True
    teacher: torch.nn.Module | None = None  # knowledge distillation (frozen, eval mode, same input tensor)
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    features: torch.nn.Module | None = None  # feature distillation (training.feature_distill.FeatureDistiller)
    feature_weight: float = 1.0
    target_weight: float = 1.0  # weight of the label loss (0: pretraining, from features or masked images only)
    masked: torch.nn.Module | None = None  # FCMAE masked-image modelling (training.fcmae.FCMAEHead)
    mask_weight: float = 1.0


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA, and on CPU when asked (``run.cpu_bf16``: pays for dense convs on AVX-512 BF16)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _num_classes(model: torch.nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is None:
        raise ValueError(f"{type(model).__name__} has no num_classes; cannot one-hot targets for mixup/cutmix")
    return int(n)


def compute_loss(model, x, y, soft, opt: StepOptions, *,
                 mixed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``soft`` is the target distribution when ``opt.soft_targets`` or when the batch was mixed (mixup/cutmix).

    The logits are None when only the masked-image loss trains (FCMAE pretraining needs no unmasked pass)."""
    if opt.masked is not None and not opt.target_weight and opt.teacher is None and opt.features is None:
        loss = opt.mask_weight * opt.masked.loss(model, x)
        return loss, None
    logits, maps, feats = student_features(model, x)
    loss = classification_loss(logits, y, soft if (opt.soft_targets or mixed) else None,
                               label_smoothing=opt.label_smoothing, weights=opt.class_weights)
    if opt.target_weight != 1.0:
        loss = opt.target_weight * loss
    if opt.masked is not None and opt.mask_weight:
        loss = loss + opt.mask_weight * opt.masked.loss(model, x)
    if opt.teacher is not None and opt.distill_weight:
        with torch.no_grad():
            teacher_logits = opt.teacher(x)
        loss = (1.0 - opt.distill_weight) * loss + opt.distill_weight * distillation_loss(
            logits, teacher_logits, opt.distill_temperature)
    if opt.features is not None and opt.feature_weight:
        loss = loss + opt.feature_weight * opt.features.loss(x, feats)
    if opt.attention_weight and len(maps) > 1:
        loss = loss + opt.attention_weight * attention_diversity_loss(maps)
    return loss, logits


class ModelEma:
    """Exponential moving average of a model's weights (floating tensors averaged, buffers like counters copied).

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates n, so the average does not keep a
    large share of the random initial weights for epochs: with BatchNorm that mixture predicts a single class (seen:
    0.999 without warm-up, two epochs in, 26% validation accuracy where the raw weights had 60%).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1.0 - d)
            else:
                e.copy_(m)
        self.updates += 1

    def restart(self, model: torch.nn.Module) -> None:
        """Start averaging afresh from ``model``'s current weights."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0


def train_one_epoch(model: torch.nn.Module, loader: BatchLoader, augment: BatchAugment,
                    optimizer: torch.optim.Optimizer, scheduler, opt: StepOptions, *, epoch: int = 0,
                    ema: ModelEma | None = None) -> dict:
    """One pass over ``loader``; returns mean loss, training accuracy (on augmented batches), steps and seconds."""
    from tqdm import tqdm

    model.train()
    device = next(model.parameters()).device
    sam = isinstance(optimizer, SAM)
    total_loss, correct, seen, judged, steps = 0.0, 0, 0, 0, 0
    n_steps = len(loader) if not opt.max_steps else min(opt.max_steps, len(loader))
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, desc=f"epoch {epoch}", unit="batch", disable=not opt.progress, leave=False,
               dynamic_ncols=True)
    for xb, yb, sb in loader:
        if steps >= n_steps:
            break
        x = augment(xb)
        mixed = augment.mixing
        if mixed:
            target = sb if opt.soft_targets and sb is not None else \
                torch.nn.functional.one_hot(yb, num_classes=_num_classes(model)).float()
            x, sb = augment.mix(x, target.float())
        if opt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, opt.amp):
            loss, logits = compute_loss(model, x, yb, sb, opt, mixed=mixed)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {steps}")
        if sam:
            loss.backward()
            optimizer.first_step(zero_grad=True)
            bn_update(model, False)
            with autocast(device, opt.amp):
                loss2, _ = compute_loss(model, x, yb, sb, opt, mixed=mixed)
            loss2.backward()
            bn_update(model, True)
            if opt.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimizer.second_step(zero_grad=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opt.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        steps += 1
        n = yb.shape[0]
        total_loss += float(loss.detach()) * n
        if logits is not None:
            correct += int((logits.detach().argmax(-1) == yb).sum())
            judged += n
        seen += n
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / judged:.3f}" if judged else "-")
    bar.close()
    # train_accuracy is None in a pretraining without labels (no logits were computed)
    return {"train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / judged if judged else None, "steps": steps,
            "train_seconds": time.perf_counter() - t0, "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Packed, size: int, mean, std, *, gray: bool = False,
                   batch_size: int = 256, tta_flip: bool = False, amp: bool = False, channels_last: bool = False,
                   progress: bool = False) -> np.ndarray:
    """Logits (n, C) float32 for every image of ``data`` (no augmentation; optional flip TTA averages logits)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = BatchLoader(data, batch_size, device=str(device))
    out = []
    for xb, _, _ in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        x = to_float(xb, size, mean, std, gray)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def lr_lambda(scheduler: str, epochs: int, steps_per_epoch: int, *, gamma: float = 0.9, warmup_epochs: float = 0.0,
              min_lr_ratio: float = 0.0):
    """Per-step LR multiplier: linear warm-up, then exponential-per-epoch, cosine, or constant."""
    total = max(1, epochs * steps_per_epoch)
    warm = int(round(warmup_epochs * steps_per_epoch))

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if scheduler == "exponential":
            return gamma ** (step // max(1, steps_per_epoch))
        if scheduler == "cosine":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return fn
