"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch, as a face-pretrained
backbone for the expression members.

The network (dlib ``dnn_face_recognition_ex.cpp``; weights CC0, trained by Davis King for identity on about 3 M
faces) is a 29-convolution ResNet for 150 x 150 RGB chips:

- stem: 7x7 stride-2 convolution (no padding) -> affine -> ReLU -> 3x3 stride-2 max-pool (no padding);
- stages of residual blocks (3x3 conv -> affine -> ReLU -> 3x3 conv -> affine, plus the input, then ReLU) at
  32 (3 blocks), 64 (1 down + 3), 128 (1 down + 2), 256 (1 down + 2) and 256 (1 down) channels;
- a *down* block's first convolution has stride 2 and no padding, and its shortcut is a 2x2 stride-2 average pool
  of the input; dlib's ``add_prev`` adds tensors of different shapes by zero-padding the smaller one (channels,
  and rows/columns at the bottom/right), which is what :func:`_padded_add` does;
- global average pooling, then a bias-free 128-D linear embedding.

dlib's ``affine`` layers are batch normalisation folded into a per-channel scale and shift; here they are learnable
``Affine`` modules (no batch statistics), so fine-tuning starts from exactly the pretrained function. Inputs are RGB
scaled as dlib does: ``(pixel - mean_rgb) / 256`` (``mean``/``std`` below, in [0, 1] units).

Registry entries:
- ``faceres29``: expression classifier on the backbone (``head``: which pooled stage features feed the classifier);
- ``faceres29_embed``: the original identity network (128-D embedding), for checking an import against dlib;
- ``faceres29_tiny``: the same code at a few channels, for tests.

``pretrained_path`` loads a file written by ``python -m rtfer.training import-backbone`` (a plain tensor dict,
never unpickled code).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from rtfer.models.registry import register_model

#: dlib's input_rgb_image mean (122.782, 117.001, 104.298) and scale 1/256, in [0, 1] units.
DLIB_MEAN = (122.782 / 255.0, 117.001 / 255.0, 104.298 / 255.0)
DLIB_STD = (256.0 / 255.0,) * 3
#: (channels, plain blocks) per stage after the stem; every stage but the first starts with a down block.
DLIB_STAGES = ((32, 3), (64, 3), (128, 2), (256, 2), (256, 0))
#: Pooled stage features each ``head`` concatenates (stage index into DLIB_STAGES).
HEADS = {"last": (4,), "multi": (2, 3, 4), "mid": (3,), "mid2": (2, 3)}


class Affine(nn.Module):
    """Per-channel scale and shift (dlib's ``affine`` layer: batch norm folded at the end of training)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: the sum over the larger shape, the smaller tensor zero-padded (channels, bottom, right)."""
    c, h, w = max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2]), max(a.shape[3], b.shape[3])

    def pad(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if dc or dh or dw else t

    return pad(a) + pad(b)


class Block(nn.Module):
    """Residual block; ``down``: stride-2 unpadded first conv and an average-pooled shortcut (dlib ``ares_down``)."""

    def __init__(self, cin: int, cout: int, down: bool = False):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_padded_add(y, skip) if self.down else y + skip)


def stage_sizes(size: int, num_stages: int = len(DLIB_STAGES)) -> list[int]:
    """Side length of each stage's output for a ``size`` x ``size`` input (0 where the stage cannot run)."""
    h = (size - 7) // 2 + 1
    h = (h - 3) // 2 + 1 if h >= 3 else 0
    out = [max(h, 0)]
    for _ in range(1, num_stages):
        h = max((h - 3) // 2 + 1, (h - 2) // 2 + 1) if h >= 3 else 0
        out.append(h)
    return out


class FaceResNet(nn.Module):
    """dlib's face-recognition ResNet trunk; ``forward_stages`` returns each stage's feature map.

    ``depth`` keeps only the first stages (a classifier that pools stage 3 need not run stage 4)."""

    def __init__(self, stages=DLIB_STAGES, depth: int | None = None):
        super().__init__()
        stages = tuple(stages)[:depth]
        stem = stages[0][0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=0)
        self.aff1 = Affine(stem)
        blocks, cin = [], stem
        for i, (c, n) in enumerate(stages):
            stage = ([Block(cin, c, down=True)] if i else []) + [Block(c, c) for _ in range(n)]
            blocks.append(nn.Sequential(*stage))
            cin = c
        self.stages = nn.ModuleList(blocks)
        self.widths = tuple(c for c, _ in stages)

    @torch.no_grad()
    def fold_affine(self) -> None:
        """Fold each affine scale/shift into the convolution before it (the same function) and reset the affine to
        the identity. dlib's convolutions are tiny (mean |w| about 0.008) and its affine scales large (5-20), so an
        optimiser's step (about the learning rate per weight) would change them by several percent at once;
        folded, the weights have the usual scale and fine-tuning starts smoothly."""
        pairs = [(self.conv1, self.aff1)]
        for stage in self.stages:
            for block in stage:
                pairs += [(block.conv1, block.aff1), (block.conv2, block.aff2)]
        for conv, aff in pairs:
            conv.weight.mul_(aff.weight.view(-1, 1, 1, 1))
            conv.bias.mul_(aff.weight).add_(aff.bias)
            aff.weight.fill_(1.0)
            aff.bias.zero_()

    def forward_stages(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Each stage's output, for the first ``upto`` stages (default: all)."""
        x = F.max_pool2d(F.relu(self.aff1(self.conv1(x))), 3, 2)
        out = []
        for stage in list(self.stages)[:upto]:
            x = stage(x)
            out.append(x)
        return out


class FaceResEmbed(nn.Module):
    """The identity network as dlib runs it: trunk, global average pool, bias-free 128-D linear."""

    def __init__(self, stages=DLIB_STAGES, dim: int = 128):
        super().__init__()
        self.trunk = FaceResNet(stages)
        self.fc = nn.Linear(stages[-1][0], dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk.forward_stages(x)[-1].mean(dim=(2, 3)))


class FaceResClassifier(nn.Module):
    """Expression classifier: pooled features of the ``head`` stages, dropout, a linear layer."""

    def __init__(self, num_classes: int = 7, stages=DLIB_STAGES, head: str = "multi", drop_rate: float = 0.3):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head_stages = HEADS[head]
        self.trunk = FaceResNet(stages, depth=max(self.head_stages) + 1)
        width = sum(self.trunk.widths[i] for i in self.head_stages)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, num_classes)
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.trunk.forward_stages(x)
        return torch.cat([maps[i].mean(dim=(2, 3)) for i in self.head_stages], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def load_backbone(model: nn.Module, path: str | Path) -> dict:
    """Load an ``import-backbone`` file's trunk tensors into ``model.trunk`` (and its embedding into ``model.fc``
    for the identity network); returns the file's provenance."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file {path} does not exist (make it with python -m rtfer.training "
                                f"import-backbone)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "trunk" not in blob:
        raise ValueError(f"{path} is not an rtfer backbone file (no 'trunk' tensors)")
    own = model.trunk.state_dict()
    # a trunk cut short (``depth``) takes the stages it has; every tensor it has must be in the file
    tensors = {k: v for k, v in blob["trunk"].items() if k in own}
    model.trunk.load_state_dict(tensors, strict=True)
    if isinstance(model, FaceResEmbed):
        model.fc.load_state_dict(blob["embed"], strict=True)
    return dict(blob.get("provenance", {}))


def _cfg(model: nn.Module, input_size: int, provenance: dict | None = None) -> nn.Module:
    model.default_cfg = {"input_size": int(input_size), "mean": DLIB_MEAN, "std": DLIB_STD, "color": "rgb"}
    if provenance:
        model.provenance = provenance
    return model


def _build(stages, num_classes, input_size, head, drop_rate, pretrained, pretrained_path) -> nn.Module:
    if pretrained and not pretrained_path:
        raise RuntimeError("faceres29 weights are imported, not downloaded: run python -m rtfer.training "
                           "import-backbone dlib -o BACKBONE.pt and pass pretrained_path=BACKBONE.pt")
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    need = max(HEADS[head]) + 1
    if min(stage_sizes(int(input_size), need)) < 1:
        raise ValueError(f"input_size {input_size} is too small for head {head!r} (the trunk downsamples without "
                         f"padding; stage sides would be {stage_sizes(int(input_size), need)})")
    model = FaceResClassifier(num_classes, stages, head, drop_rate)
    provenance = None
    if pretrained_path:
        provenance = load_backbone(model, pretrained_path)
        model.trunk.fold_affine()
    return _cfg(model, input_size, provenance)


@register_model
def faceres29(num_classes: int = 7, input_size: int = 112, head: str = "multi", drop_rate: float = 0.3,
              pretrained: bool = False, pretrained_path=None) -> nn.Module:
    """dlib's face-recognition ResNet-29 trunk with an expression head."""
    return _build(DLIB_STAGES, num_classes, input_size, head, drop_rate, pretrained, pretrained_path)


@register_model
def faceres29_tiny(num_classes: int = 7, input_size: int = 64, head: str = "multi", drop_rate: float = 0.0,
                   pretrained: bool = False, pretrained_path=None) -> nn.Module:
    """Test variant: the same code at 4-16 channels."""
    stages = ((4, 1), (8, 1), (8, 1), (16, 1), (16, 0))
    return _build(stages, num_classes, input_size, head, drop_rate, pretrained, pretrained_path)


@register_model
def faceres29_embed(num_classes: int = 128, input_size: int = 150, pretrained: bool = False,
                    pretrained_path=None) -> nn.Module:
    """The original identity network (``num_classes`` = embedding size, 128), for checking an import."""
    model = FaceResEmbed(DLIB_STAGES, num_classes)
    provenance = load_backbone(model, pretrained_path) if pretrained_path else None
    return _cfg(model, input_size, provenance)
