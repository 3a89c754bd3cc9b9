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
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 = off (both on: one of the two per batch, evenly)
    mix_prob: float = 1.0  # share of batches that are mixed when mixup or cutmix is on
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

    @property
    def mixing(self) -> bool:
        return self.cfg.enabled and (self.cfg.mixup > 0 or self.cfg.cutmix > 0)

    def mix(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix of a normalised batch with its reversed order; ``target`` (n, k) distributions are mixed
        with the same weight (for cutmix: the pasted area's share). Returns the inputs unchanged when off."""
        c = self.cfg
        if not self.mixing or float(torch.rand(1, generator=self.generator)) >= c.mix_prob:
            return x, target
        use_cutmix = c.cutmix > 0 and (c.mixup <= 0 or float(torch.rand(1, generator=self.generator)) < 0.5)
        alpha = c.cutmix if use_cutmix else c.mixup
        lam = _beta(self.generator, alpha)
        flipped_x, flipped_t = x.flip(0), target.flip(0)
        if not use_cutmix:
            return x * lam + flipped_x * (1 - lam), target * lam + flipped_t * (1 - lam)
        _, _, h, w = x.shape
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(round(h * cut)), int(round(w * cut))
        cy, cx = (int(torch.randint(0, n, (1,), generator=self.generator)) for n in (h, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = flipped_x[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return out, target * lam + flipped_t * (1 - lam)

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


def _beta(generator: torch.Generator, alpha: float) -> float:
    """A Beta(alpha, alpha) draw through its inverse CDF, from a uniform of ``generator`` (so seeds reproduce it)."""
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, float(torch.rand(1, generator=generator))))
