"""The earlier systems' networks (``../shared/SEED-SYSTEMS.md`` B and C) as registry entries: baselines and fast
distillation teachers for the ensemble members.

- ``smallcnn`` / ``widercnn`` (system B): four Conv-ReLU-MaxPool blocks, global average pooling, dropout and a linear
  layer; about 390k / 764k parameters (the convolutions do not depend on the input size; published at 160 px).
- ``resnet18_cbam_attn`` (system C): ResNet-18 up to layer 3, CBAM (channel then spatial attention), a patch-extraction
  block (two depthwise-separable convolutions and a pointwise one, down to a 2x2 grid), one-head self-attention
  over the four patch tokens with LayerNorm, global pooling and the classifier. Published at 224 px (a 14x14 map
  after layer 3). ``resnet18_cbam_attn_fer`` is the variant for 48-64 px FER data: a 3x3 stride-1 stem without the
  max-pool, so layer 3 still sees a 12x12 map at 48 px and the attention a 2x2 grid.

All take ``input_size`` (recorded in ``default_cfg``), ``drop_rate`` and ImageNet mean/std like the other members.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rtfer.models.registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg(model: nn.Module, input_size: int) -> nn.Module:
    model.default_cfg = {"input_size": int(input_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "color": "rgb"}
    return model


class PlainCNN(nn.Module):
    """System B's CNN: ``len(widths)`` blocks of 3x3 conv -> ReLU -> 2x2 max-pool, global average pool, dropout,
    linear."""

    def __init__(self, widths: tuple[int, ...], num_classes: int = 7, drop_rate: float = 0.3):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).mean(dim=(2, 3))))


def _plain(widths, num_classes, input_size, drop_rate, pretrained, pretrained_path) -> nn.Module:
    if pretrained or pretrained_path:
        raise RuntimeError("this baseline has no pretrained weights; train it with python -m rtfer.training")
    if int(input_size) < 16:
        raise ValueError(f"input_size must be at least 16 (four 2x2 max-pools), got {input_size}")
    return _cfg(PlainCNN(widths, num_classes, drop_rate), input_size)


@register_model
def smallcnn(num_classes: int = 7, input_size: int = 160, drop_rate: float = 0.3, pretrained: bool = False,
             pretrained_path=None) -> nn.Module:
    """System B's SmallCNN (about 390k parameters)."""
    return _plain((32, 64, 128, 256), num_classes, input_size, drop_rate, pretrained, pretrained_path)


@register_model
def widercnn(num_classes: int = 7, input_size: int = 160, drop_rate: float = 0.3, pretrained: bool = False,
             pretrained_path=None) -> nn.Module:
    """System B's WiderCNN (about 764k parameters)."""
    return _plain((48, 96, 192, 320), num_classes, input_size, drop_rate, pretrained, pretrained_path)


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel attention (shared MLP over average- and max-pooled
    descriptors), then spatial attention (7x7 conv over channel-average and channel-max maps)."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(avg + mx)
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


def _dw_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
                         nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResNet18CbamAttn(nn.Module):
    """ResNet-18 (layers 1-3) -> CBAM -> patch extraction to a 2x2 grid -> one-head self-attention + LayerNorm ->
    mean over the four tokens -> classifier."""

    def __init__(self, num_classes: int = 7, small_input: bool = False, drop_rate: float = 0.0, dim: int = 256):
        super().__init__()
        from torchvision.models import resnet18

        r = resnet18(weights=None)
        if small_input:  # 48-64 px faces: no early downsampling, so layer 3 still has a 12x12 (48 px) map
            stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), r.bn1, r.relu)
        else:
            stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.backbone = nn.Sequential(stem, r.layer1, r.layer2, r.layer3)
        self.cbam = CBAM(256)
        self.patches = nn.Sequential(_dw_separable(256, 256, 2), _dw_separable(256, 256, 2),
                                     nn.Conv2d(256, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes)
        self.num_classes = num_classes
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.patches(self.cbam(self.backbone(x)))
        if f.shape[-1] != 2 or f.shape[-2] != 2:
            f = F.adaptive_avg_pool2d(f, 2)  # the 2x2 patch grid (224 px: 14 -> 7 -> 4 -> 2)
        tokens = f.flatten(2).transpose(1, 2)  # (n, 4, dim)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / self.dim ** 0.5, dim=-1)
        tokens = self.norm(tokens + att @ v)
        return self.fc(self.dropout(tokens.mean(dim=1)))


def _cbam_attn(num_classes, input_size, drop_rate, small, pretrained, pretrained_path) -> nn.Module:
    if pretrained or pretrained_path:
        raise RuntimeError("resnet18_cbam_attn has no downloadable weights here; "
                           "train it with python -m rtfer.training")
    minimum = 16 if small else 64
    if int(input_size) < minimum:
        raise ValueError(f"input_size must be at least {minimum}, got {input_size}")
    return _cfg(ResNet18CbamAttn(num_classes, small_input=small, drop_rate=drop_rate), input_size)


@register_model
def resnet18_cbam_attn(num_classes: int = 7, input_size: int = 224, drop_rate: float = 0.0, pretrained: bool = False,
                       pretrained_path=None) -> nn.Module:
    """System C as published: 224 px, a 14x14 map after layer 3."""
    return _cbam_attn(num_classes, input_size, drop_rate, False, pretrained, pretrained_path)


@register_model
def resnet18_cbam_attn_fer(num_classes: int = 7, input_size: int = 48, drop_rate: float = 0.0,
                           pretrained: bool = False, pretrained_path=None) -> nn.Module:
    """System C for 48-64 px FER data: a 3x3 stride-1 stem without max-pool (12x12 after layer 3 at 48 px)."""
    return _cbam_attn(num_classes, input_size, drop_rate, True, pretrained, pretrained_path)
