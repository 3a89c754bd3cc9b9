"""DDAMFN: MixedFeatureNet backbone + dual-direction attention (coordinate-attention) head.

Written from the DDAMFN paper and the reference code (SainingZhang/DDAMFN, networks/DDAM.py and
networks/MixedFeatureNet.py); module and parameter names and shapes match the reference so that its trained
checkpoints (``features.*``, ``cat_head{i}.*``, ``Linear.*``, ``fc.*``, ``bn.*``) and the MS-Celeb pretrained
MixedFeatureNet (``conv1.*`` ... ``conv_6_sep.*``) load. The reference also carries a few modules that its forward
pass never calls (the BN/PReLU inside each mixed depthwise conv, the ``Linear`` block inside each attention head, the
final BatchNorm1d); they are kept so the checkpoints load strictly, and are simply not part of an ONNX export.

The input size is configurable: the backbone downsamples by 16 (8 with ``stem_stride=1``), and the head's depthwise
"GDC" kernels take the whole feature map (7x7 at 112 px, 4x4 at 64 px, 6x6 for ``ddamfn_fer`` at 48 px).

``ddamfn_fer`` is the CPU/FER2013 member: the same MixedFeatureNet blocks and dual-direction attention head, but total
stride 8 (the first mixed block keeps its resolution) so 48 px faces reach the head as a 6x6 map (the stock backbone would leave a degenerate 3x3), and
narrower, shallower stages so that it trains on two CPU cores and runs in a few milliseconds per face.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtfer.models.registry import register_model

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MixedFeatureNetSpec:
    """Widths of a MixedFeatureNet. ``down*``: (out_c, expanded_c, kernels, splits) of a stride-2 mixed block;
    ``stage*``: (num_blocks, expanded_c, kernels, splits) of a residual stage at constant width."""

    stem: int
    down23: tuple
    stage3: tuple
    down34: tuple
    stage4: tuple
    down45: tuple
    stage5: tuple
    out_channels: int


#: The reference MixedFeatureNet (MFN_msceleb.pth) widths.
MFN_SPEC = MixedFeatureNetSpec(
    stem=64,
    down23=(64, 128, (3, 5, 7), (64, 32, 32)),
    stage3=(9, 128, (3, 5), (96, 32)),
    down34=(128, 256, (3, 5, 7), (128, 64, 64)),
    stage4=(16, 256, (3, 5), (192, 64)),
    down45=(256, 1024, (3, 5, 7, 9), (256, 256, 256, 256)),
    stage5=(6, 512, (3, 5, 7), (172, 170, 170)),
    out_channels=512,
)

#: The FER2013/CPU member (``ddamfn_fer``): about a fifth of the reference's blocks, narrower stages.
MFN_FER_SPEC = MixedFeatureNetSpec(
    stem=32,
    down23=(48, 96, (3, 5, 7), (32, 32, 32)),
    stage3=(2, 96, (3, 5), (64, 32)),
    down34=(96, 192, (3, 5, 7), (64, 64, 64)),
    stage4=(4, 192, (3, 5), (128, 64)),
    down45=(160, 480, (3, 5, 7), (160, 160, 160)),
    stage5=(2, 320, (3, 5, 7), (128, 96, 96)),
    out_channels=320,
)

#: A tiny variant for tests: same code path (multi- and single-kernel mixed convs, residual stages, two heads).
MFN_TINY_SPEC = MixedFeatureNetSpec(
    stem=8,
    down23=(8, 16, (3, 5), (8, 8)),
    stage3=(1, 16, (3, 5), (8, 8)),
    down34=(16, 32, (3, 5, 7), (16, 8, 8)),
    stage4=(1, 32, (3,), (32,)),
    down45=(32, 64, (3, 5), (32, 32)),
    stage5=(1, 64, (3, 5), (32, 32)),
    out_channels=64,
)


class ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """Conv (no bias) -> BN, no activation."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _add_gate(module: nn.Module, channels: int, reduction: int) -> None:
    """The coordinate-attention gate layers shared by the backbone and head blocks (reference names and order)."""
    mip = max(8, channels // reduction)
    module.conv1 = nn.Conv2d(channels, mip, 1)
    module.bn1 = nn.BatchNorm2d(mip)
    module.conv2 = nn.Conv2d(mip, channels, 1)
    module.conv3 = nn.Conv2d(mip, channels, 1)
    module.act = nn.Hardswish()


def _gate(module: nn.Module, x_h: torch.Tensor, x_w: torch.Tensor) -> torch.Tensor:
    """(n, c, h, 1) and (n, c, w, 1) descriptors -> the (n, c, h, w) attention map, broadcast from its two factors."""
    h, w = x_h.shape[2], x_w.shape[2]
    y = module.act(module.bn1(module.conv1(torch.cat([x_h, x_w], dim=2))))
    y_h, y_w = torch.split(y, [h, w], dim=2)
    a_h = module.conv2(y_h).sigmoid()                            # (n, c, h, 1)
    a_w = module.conv3(y_w.transpose(2, 3)).sigmoid()            # (n, c, 1, w)
    return a_w * a_h


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al. 2021) inside the backbone blocks: pooled along H and W, gates the input."""

    def __init__(self, channels: int, reduction: int = 32):
        super().__init__()
        _add_gate(self, channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = x.mean(dim=3, keepdim=True)                       # (n, c, h, 1)
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)       # (n, c, w, 1)
        return x * _gate(self, x_h, x_w)


class MDConv(nn.Module):
    """Mixed depthwise conv: channel groups convolved with different kernel sizes, then concatenated.

    ``bn`` and ``prelu`` exist in the reference checkpoints but its forward never applies them; kept for loading.
    """

    def __init__(self, channels: int, kernels: tuple[int, ...], splits: tuple[int, ...], stride: int):
        super().__init__()
        if sum(splits) != channels or len(kernels) != len(splits):
            raise ValueError(f"MDConv splits {splits} must sum to {channels} and match kernels {kernels}")
        self.splits = [int(s) for s in splits]
        self.mixed_depthwise_conv = nn.ModuleList(
            nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False) for k, c in zip(kernels, splits))
        self.bn = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.mixed_depthwise_conv) == 1:
            return self.mixed_depthwise_conv[0](x)
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(t) for conv, t in zip(self.mixed_depthwise_conv, parts)], dim=1)


class MixDepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand (PReLU) -> mixed depthwise -> coordinate attention -> 1x1 project."""

    def __init__(self, in_c: int, out_c: int, expand: int, kernels, splits, stride: int, residual: bool = False):
        super().__init__()
        self.conv = ConvBlock(in_c, expand)
        self.conv_dw = MDConv(expand, kernels, splits, stride)
        self.CA = CoordAtt(expand)
        self.project = LinearBlock(expand, out_c)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + y if self.residual else y


class MixResidual(nn.Module):
    """A stage of residual MixDepthWise blocks at constant width (``model`` as in the reference)."""

    def __init__(self, channels: int, num_blocks: int, expand: int, kernels, splits):
        super().__init__()
        self.model = nn.Sequential(*[MixDepthWise(channels, channels, expand, kernels, splits, 1, residual=True)
                                     for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


#: Reference MixedFeatureNet child names, in the order DDAMFN's ``features`` Sequential holds them.
MFN_FEATURE_NAMES = ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5",
                     "conv_6_sep")


def mixed_feature_net(spec: MixedFeatureNetSpec = MFN_SPEC, strides: tuple = (2, 2, 2, 2)) -> nn.Sequential:
    """The MixedFeatureNet trunk, as DDAMFN's ``features``: ``spec.out_channels`` maps at input / prod(strides).

    ``strides``: of the stem conv and the three mixed downsampling blocks (the reference: all 2, input / 16)."""
    s, (s1, s2, s3, s4) = spec, strides
    return nn.Sequential(
        ConvBlock(3, s.stem, kernel=(3, 3), stride=(s1, s1), padding=(1, 1)),
        ConvBlock(s.stem, s.stem, kernel=(3, 3), padding=(1, 1), groups=s.stem),
        MixDepthWise(s.stem, s.down23[0], s.down23[1], s.down23[2], s.down23[3], stride=s2),
        MixResidual(s.down23[0], *s.stage3),
        MixDepthWise(s.down23[0], s.down34[0], s.down34[1], s.down34[2], s.down34[3], stride=s3),
        MixResidual(s.down34[0], *s.stage4),
        MixDepthWise(s.down34[0], s.down45[0], s.down45[1], s.down45[2], s.down45[3], stride=s4),
        MixResidual(s.down45[0], *s.stage5),
        ConvBlock(s.down45[0], s.out_channels),
    )


class HeadCoordAtt(nn.Module):
    """Dual-direction attention: depthwise (1 x W) and (H x 1) linear convs instead of pooling, then the
    coordinate-attention gate. Returns the attention map (n, c, h, w), not the gated input."""

    def __init__(self, channels: int, feat: int, reduction: int = 32):
        super().__init__()
        self.Linear_h = LinearBlock(channels, channels, kernel=(1, feat), groups=channels)
        self.Linear_w = LinearBlock(channels, channels, kernel=(feat, 1), groups=channels)
        _add_gate(self, channels, reduction)
        # Present in the reference checkpoints, unused by its forward.
        self.Linear = LinearBlock(channels, channels, kernel=(feat, feat), groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gate(self, self.Linear_h(x), self.Linear_w(x).transpose(2, 3))


class CoordAttHead(nn.Module):
    def __init__(self, channels: int, feat: int):
        super().__init__()
        self.CoordAtt = HeadCoordAtt(channels, feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CoordAtt(x)


class DDAMFN(nn.Module):
    """MixedFeatureNet features -> ``num_head`` attention maps combined by element-wise max -> gated features ->
    7x7 (input/16) depthwise linear GDC -> 512-d -> fc logits. ``strides`` (stem and the three downsampling blocks)
    set the trunk's total stride; one of them at 1 halves it (input/8)."""

    def __init__(self, num_classes: int = 7, num_head: int = 2, input_size: int = 112,
                 spec: MixedFeatureNetSpec = MFN_SPEC, strides: tuple = (2, 2, 2, 2)):
        super().__init__()
        strides = tuple(int(v) for v in strides)
        if len(strides) != 4 or any(v not in (1, 2) for v in strides):
            raise ValueError(f"strides must be four values of 1 or 2, got {strides}")
        stride = 2 ** sum(v == 2 for v in strides)
        if input_size % stride or input_size < stride:
            raise ValueError(f"DDAMFN input_size must be a multiple of {stride}, got {input_size}")
        if num_head < 1:
            raise ValueError(f"num_head must be >= 1, got {num_head}")
        feat = input_size // stride
        c = spec.out_channels
        self.features = mixed_feature_net(spec, strides)
        self.num_head = int(num_head)
        for i in range(self.num_head):
            setattr(self, f"cat_head{i}", CoordAttHead(c, feat))
        self.Linear = LinearBlock(c, c, kernel=(feat, feat), groups=c)
        self.fc = nn.Linear(c, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)  # reference checkpoints carry it; its forward does not use it
        self.num_classes = num_classes
        self.input_size = input_size
        self.default_cfg = {"input_size": input_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "color": "rgb"}

    def heads(self) -> list[nn.Module]:
        return [getattr(self, f"cat_head{i}") for i in range(self.num_head)]

    def forward_train(self, x: torch.Tensor) -> dict:
        """Logits plus the per-head attention maps (n, c, h, w) for the attention-diversity loss."""
        feats = self.features(x)
        maps = [head(feats) for head in self.heads()]
        att = maps[0]
        for m in maps[1:]:
            att = torch.maximum(att, m)
        y = self.Linear(feats * att).flatten(1)
        return {"logits": self.fc(y), "attention": maps, "features": feats}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["logits"]


def load_mfn_backbone(model: DDAMFN, source: str | Path | dict) -> tuple[list[str], list[str]]:
    """Load MixedFeatureNet (MS-Celeb) weights into ``model.features``.

    ``source`` is a path to the reference's ``MFN_msceleb.pth`` (a pickled MixedFeatureNet module), a state dict
    file, or a state dict. Returns (missing, unexpected): backbone keys the file lacks, and file keys that have no
    place in DDAMFN (the face-embedding tail: conv_6_dw, linear, bn). A shape mismatch raises ValueError.
    """
    state = read_state_dict(source) if not isinstance(source, dict) else source
    state = strip_prefixes(state)
    index = {name: i for i, name in enumerate(MFN_FEATURE_NAMES)}
    mapped, unexpected = {}, []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in index:
            mapped[f"features.{index[head]}.{rest}"] = value
        elif head == "features":
            mapped[key] = value
        else:
            unexpected.append(key)
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"MixedFeatureNet weights do not fit this DDAMFN: {bad[0]} (and {len(bad) - 1} more)")
    unexpected += [k for k in mapped if k not in own]
    mapped = {k: v for k, v in mapped.items() if k in own}
    missing = [k for k in own if k.startswith("features.") and k not in mapped]
    model.load_state_dict(mapped, strict=False)
    log.info("MixedFeatureNet backbone: loaded %d tensors, %d backbone keys missing, %d unused", len(mapped),
             len(missing), len(unexpected))
    return missing, unexpected


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a checkpoint: a state dict or {"model_state_dict"|"state_dict"|"model": ...}.

    Only ``torch.load(weights_only=True)``: the runtime never unpickles code. A pickled module (the reference's
    MFN_msceleb.pth) is refused here; ``rtfer.training.reference.read_checkpoint(..., trust_pickle=True)`` reads it
    when the user vouches for the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module or other objects: only safe loading here
        raise ValueError(f"{path.name} is not a plain tensor checkpoint: reading it would unpickle code from the "
                         "file; if you trust its source, load it through `python -m rtfer.training` with the "
                         f"trust-pickle option ({type(exc).__name__})") from None
    state = state_dict_of(obj)
    if state is None:
        raise ValueError(f"{path.name} holds no recognisable state dict (got {type(obj).__name__})")
    return state


def state_dict_of(obj) -> dict[str, torch.Tensor] | None:
    """The tensors of a loaded checkpoint object (module, state dict, or a dict wrapping one), else None."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                inner = obj[key]
                return inner.state_dict() if isinstance(inner, nn.Module) else dict(inner)
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    return None


def strip_prefixes(state: dict) -> dict:
    """Drop DataParallel ``module.`` (and torch.compile ``_orig_mod.``) prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _build(num_classes: int, spec: MixedFeatureNetSpec, num_head: int, input_size: int, pretrained: bool,
           pretrained_path: str | Path | None, strides: tuple = (2, 2, 2, 2)) -> DDAMFN:
    model = DDAMFN(num_classes=num_classes, num_head=num_head, input_size=input_size, spec=spec, strides=strides)
    if pretrained_path:
        missing, _ = load_mfn_backbone(model, pretrained_path)
        if missing:
            raise ValueError(f"{pretrained_path} lacks {len(missing)} backbone tensors, e.g. {missing[0]}")
    elif pretrained:
        raise RuntimeError("DDAMFN has no downloadable weights: pass --pretrained-path MFN_msceleb.pth "
                           "(the MS-Celeb MixedFeatureNet) or --no-pretrained")
    return model


@register_model
def ddamfn(num_classes: int = 7, num_head: int = 2, input_size: int = 112, pretrained: bool = False,
           pretrained_path: str | Path | None = None) -> DDAMFN:
    """DDAMFN as published (4.19M parameters at 112 px); ``pretrained_path`` loads MFN_msceleb.pth."""
    return _build(num_classes, MFN_SPEC, num_head, input_size, pretrained, pretrained_path)


@register_model
def ddamfn_tiny(num_classes: int = 7, num_head: int = 2, input_size: int = 112, pretrained: bool = False,
                pretrained_path: str | Path | None = None) -> DDAMFN:
    """A few-ten-thousand-parameter DDAMFN for tests (same code path, narrow widths, one block per stage)."""
    return _build(num_classes, MFN_TINY_SPEC, num_head, input_size, pretrained, pretrained_path)


@register_model
def ddamfn_fer(num_classes: int = 7, num_head: int = 2, input_size: int = 48, strides: tuple = (2, 1, 2, 2),
               pretrained: bool = False, pretrained_path: str | Path | None = None) -> DDAMFN:
    """DDAMFN for 48 px FER data on CPU: total stride 8 (a 6x6 map at the head), ``MFN_FER_SPEC`` widths."""
    if pretrained or pretrained_path:
        raise RuntimeError("ddamfn_fer has no pretrained backbone (MFN_msceleb.pth fits the reference 'ddamfn' only)")
    return _build(num_classes, MFN_FER_SPEC, num_head, input_size, False, None, strides=tuple(strides))
