"""Training configuration: dataclasses with defaults, overridden by a YAML file, then by CLI ``key=value`` pairs.

Unknown keys are rejected with a close-match suggestion (``optim.lrr`` -> "did you mean optim.lr?"), and the
resolved configuration is saved beside every run (``config.yaml``) so a run can be reproduced from its folder.
"""
from __future__ import annotations

import difflib
import logging
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from rtfer.errors import InputError
from rtfer.training.augment import AugmentConfig

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Splits are packed .npz files (``python -m rtfer.training pack``) or image-class folders (decoded in memory)."""

    train: str = ""
    val: str = ""
    test: str = ""  # evaluated once at the end with the selected checkpoint (RAF-DB protocol)
    soft_targets: bool = False  # FER+ vote distributions as targets (when the packed file has them)
    weighted_sampling: bool = False
    folder_label_weight: float = 0.0  # blend soft targets with the image folder's class (FER2013's original label)
    batch_size: int = 128
    eval_batch_size: int = 256


@dataclass
class ModelConfig:
    name: str = "ddamfn"
    input_size: int = 0  # 0: the architecture's default
    kwargs: dict = field(default_factory=dict)  # extra create_model kwargs (drop_rate, num_head, pretrained_path...)
    color: str = ""  # "" = the model's default; "gray" converts inputs to grayscale (FER2013-style data)
    trust_pickle: bool = False  # let kwargs.pretrained_path be a pickled module (MFN_msceleb.pth); runs its code


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    sam: bool = True
    rho: float = 0.05
    adaptive: bool = False  # ASAM
    scheduler: str = "exponential"  # exponential | cosine | none
    gamma: float = 0.9  # exponential decay per epoch
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    grad_clip: float = 0.0
    backbone_lr_scale: float = 1.0  # lr multiplier for a pretrained trunk (parameters under ``trunk.``); 0 freezes it


@dataclass
class LossConfig:
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced | sqrt
    attention_weight: float = 0.1  # DDAMFN attention-diversity loss (models with forward_train attention maps)
    distill_from: str = ""  # teacher: a training checkpoint (best.pt) or a bundle member's .onnx file
    distill_weight: float = 0.5  # loss = (1 - w) * target loss + w * T^2 * KL(teacher || student) at temperature T
    distill_temperature: float = 2.0
    # feature distillation (training/feature_distill.py): regress a face-recognition trunk's stage features
    feature_from: str = ""  # an import-backbone file (identity-pretrained trunk) or a faceres training checkpoint
    feature_arch: str = "faceres29"  # the architecture an import-backbone file is built as
    feature_size: int = 112  # the teacher's input size (the student's batch is resized to it)
    feature_weight: float = 1.0
    target_weight: float = 1.0  # weight of the label loss; 0 with feature_from = pretraining on the features alone
    # FCMAE masked-image modelling (training/fcmae.py), ConvNeXt students: hide this share of the image's cells and
    # predict their pixels; 0 = off. With target_weight=0 it is ConvNeXt-V2's own pretraining, without labels
    mask_ratio: float = 0.0
    mask_patch: int = 8  # cell size in pixels (must divide the input size)
    mask_weight: float = 1.0


@dataclass
class RunConfig:
    epochs: int = 40
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # CUDA only (bfloat16 autocast)
    cpu_bf16: bool = False  # bfloat16 autocast on CPU (faster for dense convs with AVX-512 BF16; slower for depthwise)
    channels_last: bool = True  # NHWC tensors (CUDA; on CPU about 1.3x faster for DDAMFN's depthwise convs)
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    ema: bool = False
    ema_decay: float = 0.999
    tta_flip: bool = False  # average with the horizontally flipped image at evaluation
    select_metric: str = "mean_class_accuracy"  # accuracy | mean_class_accuracy
    out: str = "runs/run"
    resume: bool = False  # continue from out/last.pt when it exists
    init_from: str = ""  # start from the weights of another run's checkpoint (fine-tuning / a second phase)
    max_steps: int = 0  # per epoch, 0 = all (smoke tests)
    time_budget_min: float = 0.0  # stop before an epoch that would exceed it (0 = no limit)
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return _plain(asdict(self))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _keys(cls, prefix: str = "") -> list[str]:
    out = []
    for f in fields(cls):
        t = _field_type(cls, f.name)
        if is_dataclass(t):
            out += _keys(t, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _unknown(key: str, known: list[str]) -> InputError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return InputError(f"unknown config key {key!r}{hint}")


def _coerce(value, typ, key: str):
    """Convert ``value`` (from YAML or a CLI string) to the field's type."""
    origin = typing.get_origin(typ)
    if isinstance(value, str) and typ is not str:
        import yaml

        value = yaml.safe_load(value) if value != "" else value
    try:
        if typ is bool:
            if isinstance(value, str):
                raise ValueError
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return "" if value is None else str(value)
        if origin is tuple:
            args = typing.get_args(typ)
            return tuple(_coerce(v, args[0], key) for v in value)
        if typ is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise InputError(f"config key {key!r} expects {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def apply(cfg, updates: dict, prefix: str = "") -> None:
    """Apply a nested dict of updates onto dataclass ``cfg`` in place, checking keys and types."""
    known = _keys(type(cfg), prefix)
    names = {f.name for f in fields(cfg)}
    for k, v in updates.items():
        if k not in names:
            raise _unknown(f"{prefix}{k}", known)
        typ = _field_type(type(cfg), k)
        if is_dataclass(typ):
            if not isinstance(v, dict):
                raise InputError(f"config section {prefix}{k!r} must be a mapping, got {v!r}")
            apply(getattr(cfg, k), v, f"{prefix}{k}.")
        else:
            setattr(cfg, k, _coerce(v, typ, f"{prefix}{k}"))


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-3", "run.epochs=5"]`` -> nested dict (values parsed later, per field type)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"override {pair!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides."""
    cfg = TrainConfig()
    if path:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path} must hold a mapping of config sections")
        apply(cfg, data)
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        _apply_kwargs_overrides(cfg, ov)
        apply(cfg, ov)
    validate(cfg)
    return cfg


def _apply_kwargs_overrides(cfg: TrainConfig, ov: dict) -> None:
    """``model.kwargs.drop_rate=0.3`` sets one entry of the free-form kwargs dict (values parsed as YAML)."""
    kw = ov.get("model", {}).get("kwargs") if isinstance(ov.get("model"), dict) else None
    if isinstance(kw, dict):
        import yaml

        for k, v in kw.items():
            cfg.model.kwargs[k] = yaml.safe_load(v) if isinstance(v, str) else v
        del ov["model"]["kwargs"]


def validate(cfg: TrainConfig) -> None:
    choices = {"optim.optimizer": (cfg.optim.optimizer, ("adam", "adamw", "sgd")),
               "optim.scheduler": (cfg.optim.scheduler, ("exponential", "cosine", "none")),
               "loss.class_weights": (cfg.loss.class_weights, ("none", "balanced", "sqrt")),
               "run.select_metric": (cfg.run.select_metric, ("accuracy", "mean_class_accuracy")),
               "model.color": (cfg.model.color, ("", "rgb", "gray"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(f"{key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    if cfg.run.epochs < 1:
        raise InputError(f"run.epochs must be at least 1, got {cfg.run.epochs}")
    if cfg.data.batch_size < 1:
        raise InputError(f"data.batch_size must be at least 1, got {cfg.data.batch_size}")
    loss = cfg.loss
    if loss.target_weight < 0 or loss.feature_weight < 0 or loss.mask_weight < 0:
        raise InputError(f"loss.target_weight, loss.feature_weight and loss.mask_weight must be >= 0, got "
                         f"{loss.target_weight}, {loss.feature_weight} and {loss.mask_weight}")
    if not 0 <= loss.mask_ratio < 1:
        raise InputError(f"loss.mask_ratio must be in [0, 1) (0 = no FCMAE), got {loss.mask_ratio}")
    if loss.mask_patch < 1:
        raise InputError(f"loss.mask_patch must be at least 1 pixel, got {loss.mask_patch}")
    if loss.target_weight == 0 and not (loss.feature_from and loss.feature_weight) and \
            not (loss.mask_ratio and loss.mask_weight):
        raise InputError("loss.target_weight=0 leaves nothing to learn without loss.feature_from or loss.mask_ratio "
                         "(and its weight above 0)")
    for key, on in (("loss.feature_from", bool(loss.feature_from)), ("loss.mask_ratio", bool(loss.mask_ratio))):
        if on and cfg.optim.sam:
            raise InputError(f"{key} does not combine with optim.sam (set optim.sam=false)")
    if loss.feature_from and loss.feature_size < 32:
        raise InputError(f"loss.feature_size must be at least 32, got {loss.feature_size}")


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def config_from_dict(d: dict) -> TrainConfig:
    cfg = TrainConfig()
    apply(cfg, d)
    return cfg


__all__ = ["AugmentConfig", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig",
           "apply", "config_from_dict", "load_config", "parse_overrides", "save_config"]
