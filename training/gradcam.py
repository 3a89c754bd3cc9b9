"""Grad-CAM heat-maps (Selvaraju et al., 2017) for a few validation images per class: which face regions drive
each prediction. Activations come from one named module (default: the last convolutional stage).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtfer.labels import CLASSES
from rtfer.training.augment import to_float
from rtfer.training.data import Packed

log = logging.getLogger(__name__)


def default_layer(model: torch.nn.Module) -> str:
    """The last spatial feature stage: DDAMFN's ``features``, timm ConvNeXt's ``stages``, else the last Conv2d."""
    names = dict(model.named_modules())
    for candidate in ("features", "stages"):
        if candidate in names:
            return candidate
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str | None = None,
            target: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heat-maps (n, H, W) in [0, 1] at the input resolution, and the logits (n, C).

    ``target``: class index per image (default: the predicted class).
    """
    layer = layer or default_layer(model)
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"model has no module named {layer!r}")
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        store["act"] = out

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            logits = model(x)
            idx = logits.argmax(1) if target is None else target.to(logits.device)
            model.zero_grad(set_to_none=True)
            logits.gather(1, idx.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"], store["act"].grad
    if act.ndim != 4:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(act.shape)}; Grad-CAM needs (n, c, h, w)")
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return cam.detach().cpu().numpy(), logits.detach().cpu().numpy()


def pick_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Up to ``per_class`` random indices of every class, class by class (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            out.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def gradcam_grid(model: torch.nn.Module, data: Packed, out: str | Path, *, per_class: int = 4,
                 layer: str | None = None, seed: int = 0) -> Path:
    """A PNG grid (one row per class) of images with their heat-maps, titled true -> predicted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from rtfer.training.train import preprocessing

    size, mean, std, gray = preprocessing(model)
    idx = pick_per_class(data.labels, per_class, seed)
    if not len(idx):
        raise ValueError("no images to explain")
    device = next(model.parameters()).device
    xb = torch.from_numpy(np.ascontiguousarray(data.images[idx])).permute(0, 3, 1, 2).to(device)
    x = to_float(xb, size, mean, std, gray)
    cams, logits = gradcam(model, x, layer)
    if gray or xb.shape[1] == 1:
        shown = (x[:, 0] * std[0] + mean[0]).clamp(0, 1).cpu().numpy()
    else:  # un-normalise for display
        m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        shown = (x.permute(0, 2, 3, 1) * s + m).clamp(0, 1).cpu().numpy()
    classes_present = sorted(set(data.labels[idx].tolist()))
    cols = max(int((data.labels[idx] == c).sum()) for c in classes_present)
    fig, axes = plt.subplots(len(classes_present), cols, figsize=(1.9 * cols, 2.1 * len(classes_present)),
                             dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, c in enumerate(classes_present):
        for k, i in enumerate(np.flatnonzero(data.labels[idx] == c)):
            ax = axes[r, k]
            ax.imshow(shown[i], cmap="gray" if shown[i].ndim == 2 else None)
            ax.imshow(cams[i], cmap="jet", alpha=0.45)
            pred = int(logits[i].argmax())
            ax.set_title(f"{CLASSES[c]} -> {CLASSES[pred]}", fontsize=8, color="black" if pred == c else "red")
    fig.suptitle(f"Grad-CAM ({layer or default_layer(model)})", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
