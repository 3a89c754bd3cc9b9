"""Batch augmentation on tensors (any device): random resized crop + rotation + flip through one affine_grid,
brightness/contrast jitter and random erasing, then normalisation.

Working on whole uint8 batches after they reach the device keeps training compute-bound rather than I/O-bound, and
the same code runs on CPU and GPU. Random numbers come from a CPU ``torch.Generator`` (tiny per-sample parameter
tensors), so a seed gives the same augmentations on every device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Reference-style augmentations (RandomResizedCrop-like crop, flip, small rotation, jitter, erasing)."""

    scale: tuple[float, float] = (0.8, 1.0)  # crop area fraction
    ratio: tuple[float, float] = (0.9, 1.1)  # crop aspect ratio
    translate: float = 0.1  # extra shift, fraction of half-width
    rotate: float = 10.0  # degrees, uniform in [-rotate, rotate]
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    erase_p: float = 0.25
    erase_scale: tuple[float, float] = (0.02, 0.2)
    enabled: bool = True


def to_float(x: torch.Tensor, size: int, mean, std, gray: bool = False) -> torch.Tensor:
    """uint8 NCHW (C=1 or 3) -> float NCHW 3-channel, resized to ``size`` and normalised (evaluation path)."""
    x = x.float().mul_(1.0 / 255.0)
    if gray and x.shape[1] == 3:
        x = _to_gray(x)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    return _normalise(x, mean, std)


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class BatchAugment:
    """Callable: uint8 NCHW batch -> augmented, normalised float NCHW batch of ``size`` x ``size``."""

    def __init__(self, cfg: AugmentConfig, size: int, mean, std, *, gray: bool = False, seed: int = 0) -> None:
        self.cfg = cfg
        self.size = int(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.gray = gray
        self.generator = torch.Generator().manual_seed(int(seed))

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (hi - lo) + lo

    def theta(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affine matrices mapping output to input coordinates (normalised, align_corners=False)."""
        c = self.cfg
        area = self._uniform(n, *c.scale)
        log_r = self._uniform(n, math.log(c.ratio[0]), math.log(c.ratio[1]))
        r = torch.exp(log_r)
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        tx = (torch.rand(n, generator=self.generator) * 2 - 1) * ((1 - w) + c.translate)
        ty = (torch.rand(n, generator=self.generator) * 2 - 1) * ((1 - h) + c.translate)
        ang = self._uniform(n, -c.rotate, c.rotate) * (math.pi / 180.0)
        flip = torch.where(torch.rand(n, generator=self.generator) < c.flip, -1.0, 1.0)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * w * flip
        theta[:, 0, 1] = -sin * h
        theta[:, 1, 0] = sin * w * flip
        theta[:, 1, 1] = cos * h
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        return theta

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.enabled:
            return to_float(x, self.size, self.mean, self.std, self.gray)
        c = self.cfg
        n, dev = x.shape[0], x.device
        x = x.float().mul_(1.0 / 255.0)
        if self.gray and x.shape[1] == 3:
            x = _to_gray(x)
        theta = self.theta(n).to(dev)
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if c.brightness or c.contrast:
            b = self._uniform(n, 1 - c.brightness, 1 + c.brightness).to(dev).view(n, 1, 1, 1)
            k = self._uniform(n, 1 - c.contrast, 1 + c.contrast).to(dev).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * k + mean) * b
            x = x.clamp_(0.0, 1.0)
        x = _normalise(x, self.mean, self.std)
        if c.erase_p > 0:
            x = self._erase(x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing: a rectangle per selected image is set to zero (the normalised mean)."""
        c = self.cfg
        n, _, hgt, wid = x.shape
        apply = torch.rand(n, generator=self.generator) < c.erase_p
        if not bool(apply.any()):
            return x
        area = self._uniform(n, *c.erase_scale)
        r = torch.exp(self._uniform(n, math.log(0.3), math.log(3.3)))
        eh = (torch.sqrt(area * r) * hgt).clamp(1, hgt)
        ew = (torch.sqrt(area / r) * wid).clamp(1, wid)
        y0 = torch.rand(n, generator=self.generator) * (hgt - eh)
        x0 = torch.rand(n, generator=self.generator) * (wid - ew)
        dev = x.device
        ys = torch.arange(hgt, device=dev).view(1, hgt, 1)
        xs = torch.arange(wid, device=dev).view(1, 1, wid)
        y0, x0, eh, ew, apply = (t.to(dev) for t in (y0, x0, eh, ew, apply))
        mask = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1)) & \
               (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1)) & apply.view(n, 1, 1)
        return x.masked_fill(mask.unsqueeze(1), 0.0)
