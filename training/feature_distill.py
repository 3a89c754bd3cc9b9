"""Feature distillation from a face-recognition trunk: identity pretraining for members trained from scratch.

DDAMFN was designed to start from a MixedFeatureNet pretrained for face identity (MS-Celeb), and ConvNeXt-V2 from
its own masked-autoencoder pretraining; neither set of weights can be had here. What can be had is dlib's
face-recognition ResNet (CC0, ``import-backbone dlib``). This module lets a student of another architecture learn
that network's mid-level features (FitNets-style regression), either as a pretraining phase on faces without using
their labels (``loss.target_weight=0``) or as an auxiliary loss beside the label loss.

What the student regresses: the trunk's stage maps that the expression head pools (``head: mid2``: stages 2 and 3,
128 + 256 channels), each average-pooled to a 2 x 2 grid (upper/lower, left/right halves of the face, so the layout
survives), standardised per channel with statistics taken once from training images. The student's last feature
map is pooled to the same grid and mapped by a small 1 x 1-convolution projector (dropped after training). The
teacher sees exactly the student's augmented batch, resized and renormalised to its own input
(:class:`rtfer.training.train.ResizedInput`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from rtfer.errors import InputError

log = logging.getLogger(__name__)

#: Grid each feature map is average-pooled to before the regression.
GRID = 2


def student_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """(logits, attention maps, last feature map or None) in one forward pass.

    DDAMFN's ``forward_train`` returns its trunk map; timm networks (ConvNeXt-V2) split into ``forward_features`` and
    ``forward_head``; any other model gives logits only (no feature map)."""
    fn = getattr(model, "forward_train", None)
    if fn is not None:
        out = fn(x)
        return out["logits"], list(out.get("attention") or []), out.get("features")
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_features(x)
        return model.forward_head(feats), [], feats
    return model(x), [], None


class TrunkTargets(nn.Module):
    """A faceres trunk's ``stages`` maps, each pooled to the grid, concatenated along channels: (n, C, GRID, GRID)."""

    def __init__(self, trunk: nn.Module, stages: tuple[int, ...]) -> None:
        super().__init__()
        self.trunk, self.stages = trunk, tuple(int(s) for s in stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.trunk.forward_stages(x, upto=max(self.stages) + 1)
        return torch.cat([F.adaptive_avg_pool2d(maps[i].float(), GRID) for i in self.stages], dim=1)


def load_feature_teacher(source: str | Path, arch: str = "faceres29", size: int = 112) -> tuple[nn.Module, dict]:
    """The frozen target network and its preprocessing ``{"size", "mean", "std"}``.

    ``source`` is an ``import-backbone`` file (the identity-pretrained trunk, built as ``arch``) or a faceres
    training checkpoint (``best.pt``: its fine-tuned trunk)."""
    from rtfer.models import create_model

    path = Path(source)
    if not path.is_file():
        raise InputError(f"loss.feature_from {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(blob, dict) and "architecture" in blob:
        from rtfer.training.train import load_checkpoint

        model, _ = load_checkpoint(path)
    elif isinstance(blob, dict) and "trunk" in blob:
        model = create_model(arch, input_size=int(size), head="mid2", pretrained_path=str(path))
    else:
        raise InputError(f"loss.feature_from {path} is neither an import-backbone file nor a training checkpoint")
    trunk, stages = getattr(model, "trunk", None), getattr(model, "head_stages", None)
    if trunk is None or stages is None or not hasattr(trunk, "forward_stages"):
        raise InputError(f"loss.feature_from {path}: {type(model).__name__} has no faceres trunk to distil from")
    teacher = TrunkTargets(trunk, stages).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, {"size": int(size), "mean": tuple(model.default_cfg["mean"]), "std": tuple(model.default_cfg["std"])}


class FeatureDistiller(nn.Module):
    """Teacher targets, their per-channel standardisation, and the student's projector.

    Only the projector trains; :meth:`head_state` is what a checkpoint keeps (the teacher is rebuilt from its file)."""

    def __init__(self, teacher: nn.Module, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.teacher = teacher
        hidden = max(student_channels, teacher_channels)
        self.projector = nn.Sequential(
            nn.Conv2d(student_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, teacher_channels, 1))
        self.register_buffer("mu", torch.zeros(1, teacher_channels, 1, 1))
        self.register_buffer("sd", torch.ones(1, teacher_channels, 1, 1))

    def train(self, mode: bool = True) -> FeatureDistiller:
        super().train(mode)
        self.teacher.eval()  # frozen: only the projector trains
        return self

    @torch.no_grad()
    def fit_scale(self, batches) -> None:
        """Per-channel mean and standard deviation of the teacher's targets over ``batches`` (student inputs)."""
        t = torch.cat([self.teacher(x).float() for x in batches])
        self.mu.copy_(t.mean(dim=(0, 2, 3), keepdim=True))
        self.sd.copy_(t.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(x).float() - self.mu) / self.sd

    def loss(self, x: torch.Tensor, student_map: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the projected, grid-pooled student map and the standardised targets of ``x``."""
        pred = self.projector(F.adaptive_avg_pool2d(student_map, GRID)).float()
        return F.mse_loss(pred, self.targets(x))

    def head_state(self) -> dict:
        return {"projector": self.projector.state_dict(), "mu": self.mu.clone(), "sd": self.sd.clone()}

    def load_head_state(self, state: dict) -> None:
        self.projector.load_state_dict(state["projector"])
        self.mu.copy_(state["mu"])
        self.sd.copy_(state["sd"])


def build_distiller(cfg, student: nn.Module, sample: torch.Tensor, device: torch.device) -> FeatureDistiller | None:
    """The :class:`FeatureDistiller` of ``cfg.loss.feature_from`` for ``student`` (None when not configured).

    ``sample``: uint8 NCHW training images whose targets fix the standardisation (taken without augmentation, so the
    training run's random draws are the same with and without distillation)."""
    from rtfer.training.augment import to_float
    from rtfer.training.train import ResizedInput, preprocessing

    src = cfg.loss.feature_from
    if not src:
        return None
    teacher, pre = load_feature_teacher(src, cfg.loss.feature_arch, cfg.loss.feature_size)
    size, mean, std, gray = preprocessing(student)
    wrapped = ResizedInput(teacher, pre["size"], mean, std, pre["mean"], pre["std"])

    def batch(i: int, n: int) -> torch.Tensor:
        return to_float(sample[i:i + n].to(device), size, mean, std, gray)

    student.eval()
    with torch.no_grad():
        x = batch(0, 2)
        _, _, feats = student_features(student, x)
        t = wrapped.to(device)(x)
    student.train()
    if feats is None or feats.dim() != 4:
        raise InputError(f"loss.feature_from: {cfg.model.name} exposes no feature map to distil into")
    distiller = FeatureDistiller(wrapped, int(feats.shape[1]), int(t.shape[1])).to(device)
    with torch.no_grad():
        distiller.fit_scale([batch(i, 256) for i in range(0, len(sample), 256)])
    log.info("feature distillation from %s (%s at %d px, %d target channels, weight %.2f; label loss weight %.2f)",
             src, cfg.loss.feature_arch, pre["size"], int(t.shape[1]), cfg.loss.feature_weight,
             cfg.loss.target_weight)
    return distiller
