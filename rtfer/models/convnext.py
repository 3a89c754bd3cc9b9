"""ConvNeXt-V2 through timm: every timm ``convnextv2_*`` variant, ``convnextv2_fer`` (the CPU/FER2013 member) and
``convnextv2_test`` (tiny, for tests).

``convnextv2_fer`` keeps ConvNeXt-V2's blocks (7x7 depthwise, LayerNorm, GRN MLP) at atto widths, but replaces the
4x4 patchify stem with overlapping 3x3 stride-2 convolutions (a convolutional stem learns much faster from scratch on
small grey faces) and keeps the last stage at stride 16 (dilated) so 48 px inputs are not pooled to a 1x1 map.

kwargs: ``input_size`` (default 224; a multiple of 16), ``drop_rate`` (head dropout; the reference recipe uses
0.3), ``drop_path_rate``, ``pretrained`` (timm hub weights; needs internet) and ``pretrained_path`` (a local
checkpoint, e.g. the hub file downloaded elsewhere). Offline, ``pretrained=True`` fails with one clear message.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from rtfer.models.registry import register_model, register_pattern

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _set_cfg(model: nn.Module, input_size: int) -> nn.Module:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    model.default_cfg = {"input_size": int(input_size), "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
                         "std": tuple(cfg.get("std", IMAGENET_STD)), "color": "rgb"}
    return model


def _check_size(input_size: int) -> int:
    """Multiples of 32 tile exactly; multiples of 16 (e.g. 112, the DDAMFN crop) lose the last row/column at the
    final 2x2 downsampling (7x7 -> 3x3), which is harmless for a globally pooled classifier."""
    if int(input_size) % 16 or int(input_size) < 32:
        raise ValueError(f"ConvNeXt input_size must be a multiple of 16 and at least 32, got {input_size}")
    return int(input_size)


def create_timm_convnextv2(name: str, num_classes: int = 7, input_size: int = 224, drop_rate: float = 0.0,
                           drop_path_rate: float = 0.0, pretrained: bool = False,
                           pretrained_path: str | Path | None = None) -> nn.Module:
    """A timm ConvNeXt-V2 variant with a ``num_classes`` head and optional pretrained weights."""
    import timm

    input_size = _check_size(input_size)
    if name not in timm.list_models("convnextv2_*"):
        raise ValueError(f"unknown ConvNeXt-V2 variant {name!r} (timm has {', '.join(timm.list_models('convnextv2_*'))})")
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {path}")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        log.info("%s: loaded pretrained weights from %s", name, path)
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # hub/network errors come in many types; the user needs one actionable message
            raise RuntimeError(f"cannot download pretrained {name} weights ({type(exc).__name__}); pass "
                               "--pretrained-path FILE with a local checkpoint, or --no-pretrained") from exc
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    return _set_cfg(model, input_size)


create_timm_convnextv2.names = lambda: _timm_names()  # type: ignore[attr-defined]


def _timm_names() -> list[str]:
    import timm

    return timm.list_models("convnextv2_*")


register_pattern("convnextv2_*", create_timm_convnextv2)


@register_model
def convnextv2_test(num_classes: int = 7, input_size: int = 64, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                    pretrained: bool = False, pretrained_path: str | Path | None = None) -> nn.Module:
    """A ~30k-parameter ConvNeXt-V2 (GRN blocks, depths 1-1-1-1) built with timm's ConvNeXt class, for tests."""
    from timm.models.convnext import ConvNeXt

    if pretrained or pretrained_path:
        raise RuntimeError("convnextv2_test is a test architecture without pretrained weights; use --no-pretrained")
    model = ConvNeXt(num_classes=num_classes, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), use_grn=True,
                     ls_init_value=None, conv_mlp=True, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return _set_cfg(model, _check_size(input_size))


@register_model
def convnextv2_fer(num_classes: int = 7, input_size: int = 48, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                   dims: tuple = (40, 80, 160, 320), depths: tuple = (2, 2, 6, 2), pretrained: bool = False,
                   pretrained_path: str | Path | None = None) -> nn.Module:
    """ConvNeXt-V2 (atto widths by default) with an overlapping conv stem and output stride 16, for 48 px faces."""
    from timm.models.convnext import ConvNeXt

    if pretrained or pretrained_path:
        raise RuntimeError("convnextv2_fer has no pretrained weights (its stem differs from the hub models)")
    if int(input_size) % 16 or int(input_size) < 32:
        raise ValueError(f"convnextv2_fer input_size must be a multiple of 16 and at least 32, got {input_size}")
    model = ConvNeXt(num_classes=num_classes, depths=tuple(depths), dims=tuple(dims), use_grn=True,
                     ls_init_value=None, conv_mlp=False, stem_type="overlap_act", output_stride=16,
                     drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return _set_cfg(model, int(input_size))
