"""The training loop: build everything from a :class:`TrainConfig`, train with checkpoints/resume, keep the best
epoch on validation, and finish with a full validation (and optional test) report.

Run folder (``run.out``): ``config.yaml`` (resolved), ``last.pt`` (resume state), ``best.pt`` (selected weights +
metadata), ``metrics.jsonl`` / ``metrics.csv`` / ``curves.png``, ``val_logits.npz`` (for the stacker) and the
``val`` / ``test`` reports (JSON, Markdown, confusion PNG).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtfer.errors import InputError
from rtfer.training.augment import BatchAugment
from rtfer.training.config import TrainConfig, save_config
from rtfer.training.data import BatchLoader, Packed, class_balanced_weights, load_split, mix_folder_labels
from rtfer.training.engine import ModelEma, StepOptions, lr_lambda, predict_logits, train_one_epoch
from rtfer.training.evaluate import ClassificationMetrics, evaluate_logits, nll, write_report
from rtfer.training.fcmae import build_fcmae
from rtfer.training.feature_distill import build_distiller
from rtfer.training.losses import class_weights
from rtfer.training.runlog import RunLog
from rtfer.training.sam import SAM

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out: Path
    best_epoch: int
    best_score: float
    val: dict  # accuracy / mean_class_accuracy of the selected checkpoint
    test: dict | None
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available (use run.device=cpu)")
    return dev


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """create_model with the config's kwargs; ``model.default_cfg`` carries the size/mean/std/colour trained with."""
    from rtfer.models import create_model

    kwargs = dict(cfg.model.kwargs)
    if cfg.model.input_size:
        kwargs["input_size"] = int(cfg.model.input_size)
    backbone = None
    if cfg.model.name.startswith("ddamfn") and kwargs.get("pretrained_path"):
        backbone = kwargs.pop("pretrained_path")  # read here, where a pickled reference file may be trusted
    model = create_model(cfg.model.name, **kwargs)
    if backbone:
        from rtfer.training.reference import load_mfn_pretrained

        report = load_mfn_pretrained(model, backbone, trust_pickle=cfg.model.trust_pickle)
        if report["missing"]:
            raise InputError(f"{backbone} lacks {len(report['missing'])} backbone tensors, e.g. {report['missing'][0]}")
    model.default_cfg = dict(model.default_cfg)
    if cfg.model.color:
        model.default_cfg["color"] = cfg.model.color
    return model


def preprocessing(model: torch.nn.Module) -> tuple[int, tuple, tuple, bool]:
    d = model.default_cfg
    size = d["input_size"]
    size = int(size[-1]) if isinstance(size, (tuple, list)) else int(size)
    return size, tuple(d["mean"]), tuple(d["std"]), d.get("color", "rgb") == "gray"


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    base = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[o.optimizer]
    kw = dict(lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "sgd":
        kw["momentum"] = o.momentum
    params = [p for p in model.parameters() if p.requires_grad]
    if o.backbone_lr_scale != 1.0:  # a pretrained trunk learns more slowly than the new head (0: frozen)
        trunk = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("trunk.")]
        if not trunk:
            raise InputError(f"optim.backbone_lr_scale is set but {cfg.model.name} has no pretrained trunk")
        ids = {id(p) for p in trunk}
        params = [{"params": [p for p in params if id(p) not in ids]}]
        if o.backbone_lr_scale > 0:
            params.append({"params": trunk, "lr": o.lr * o.backbone_lr_scale})
        else:
            for p in trunk:
                p.requires_grad_(False)
    if o.sam:
        return SAM(params, base, rho=o.rho, adaptive=o.adaptive, **kw)
    return base(params, **kw)


def checkpoint_meta(model: torch.nn.Module, cfg: TrainConfig) -> dict:
    return {"architecture": getattr(model, "architecture", cfg.model.name),
            "arch_kwargs": dict(getattr(model, "arch_kwargs", {})), "default_cfg": dict(model.default_cfg),
            "provenance": dict(getattr(model, "provenance", {}) or {}),
            "config": cfg.to_dict()}


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model saved in ``best.pt`` / ``last.pt``; returns (model in eval mode, checkpoint dict)."""
    from rtfer.models import create_model

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if "architecture" not in ckpt or "model" not in ckpt:
        raise InputError(f"{path} is not an rtfer training checkpoint (no architecture/model entries)")
    model = create_model(ckpt["architecture"], **ckpt.get("arch_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    model.default_cfg = dict(ckpt.get("default_cfg", model.default_cfg))
    if ckpt.get("provenance"):
        model.provenance = dict(ckpt["provenance"])
    return model.eval(), ckpt


def init_weights(model: torch.nn.Module, source: str | Path) -> None:
    """Start from another run's checkpoint (``best.pt`` / ``last.pt``) or from a shipped bundle member's ONNX file.

    The ONNX route lets training continue from the packaged default bundle when the run folders of an earlier
    session are gone: its initializers are the member's inference weights under state_dict names (FP16 -> FP32).
    """
    source = Path(source)
    arch = getattr(model, "architecture", "?")
    if not source.is_file():
        raise InputError(f"run.init_from {source} does not exist")
    if source.suffix == ".onnx":
        from rtfer.backends.torch import load_onnx_weights
        from rtfer.errors import BackendError

        member = _bundle_member(source)
        if member is not None and member.architecture != arch:
            raise InputError(f"run.init_from {source} is a {member.architecture!r} member, not {arch!r}")
        try:
            load_onnx_weights(model, source)
        except BackendError as exc:
            raise InputError(f"run.init_from {source} does not fit {arch}: {exc}") from None
        log.info("initialised %s from the ONNX member %s", arch, source)
        return
    init = torch.load(source, map_location="cpu", weights_only=False)
    if init.get("architecture") != arch:
        raise InputError(f"run.init_from {source} holds a {init.get('architecture')!r} model, not {arch!r}")
    model.load_state_dict(init["model"])
    log.info("initialised from %s (epoch %s)", source, init.get("epoch"))


class ResizedInput(torch.nn.Module):
    """``model`` applied to its input bilinearly resized to ``size`` and renormalised from ``(mean, std)`` to
    ``(to_mean, to_std)``: a distillation teacher of another input size or normalisation than its student."""

    def __init__(self, model: torch.nn.Module, size: int, mean, std, to_mean, to_std) -> None:
        super().__init__()
        self.model, self.size = model, int(size)
        mean, std, to_mean, to_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                                      for v in (mean, std, to_mean, to_std))
        self.register_buffer("scale", std / to_std)  # x_teacher = (x * std + mean - to_mean) / to_std
        self.register_buffer("shift", (mean - to_mean) / to_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                                antialias=x.shape[-1] > self.size)
        return self.model(x * self.scale + self.shift)


def load_teacher(cfg: TrainConfig, student: torch.nn.Module, device: torch.device,
                 channels_last: bool) -> torch.nn.Module | None:
    """The frozen distillation teacher of ``loss.distill_from``. Both see the same augmented batch, so it must read
    the student's colour mode; a teacher of another input size or normalisation gets the batch resized and
    renormalised (:class:`ResizedInput`)."""
    src = cfg.loss.distill_from
    if not src:
        return None
    from rtfer.models import create_model

    path = Path(src)
    if not path.is_file():
        raise InputError(f"loss.distill_from {path} does not exist")
    if path.suffix == ".onnx":
        member = _bundle_member(path)
        if member is None:
            raise InputError(f"loss.distill_from {path} is not a member of a bundle folder (bundle.json beside it)")
        teacher = create_model(member.architecture, **member.arch_kwargs)
        init_weights(teacher, path)
        teacher.default_cfg = {**teacher.default_cfg, "input_size": member.input_size, "mean": member.mean,
                               "std": member.std, "color": member.color}
    else:
        teacher, _ = load_checkpoint(path)
    mine, theirs = preprocessing(student), preprocessing(teacher)
    if mine[3] != theirs[3]:
        raise InputError(f"distillation teacher {path} takes (size, mean, std, gray) {theirs}, the student {mine}: "
                         "both must read grey faces, or both colour ones")
    teacher = teacher.to(device).eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if mine[:3] != theirs[:3]:
        # the student's batch resized to the teacher's input the way training resizes it (bilinear) and renormalised,
        # so that a member trained on 48 px faces upsampled to 144 px teaches a 48 px student
        log.info("the teacher sees the student's %d px batch resized to its %d px and renormalised", mine[0], theirs[0])
        teacher = ResizedInput(teacher, theirs[0], mine[1], mine[2], theirs[1], theirs[2]).to(device)
    log.info("distilling from %s (weight %.2f, temperature %.1f)", path, cfg.loss.distill_weight,
             cfg.loss.distill_temperature)
    return teacher


def _bundle_member(onnx_path: Path):
    """The MemberSpec of an ONNX file inside a bundle folder (None when it is a loose file)."""
    from rtfer.bundle import BUNDLE_FILE, BundleSpec

    if not (onnx_path.parent / BUNDLE_FILE).is_file():
        return None
    return next((m for m in BundleSpec.read(onnx_path.parent).members if m.file == onnx_path.name), None)


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _sample(data: Packed, n: int, seed: int) -> torch.Tensor:
    """Up to ``n`` training images (uint8 NCHW), drawn without replacement with the run's seed."""
    idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(data))[:n])
    return torch.from_numpy(np.ascontiguousarray(data.images[idx])).permute(0, 3, 1, 2)


def _class_weight_tensor(cfg: TrainConfig, train: Packed, device) -> torch.Tensor | None:
    if cfg.loss.class_weights == "none":
        return None
    return torch.as_tensor(class_weights(train.class_counts(), cfg.loss.class_weights), device=device)


def fit(cfg: TrainConfig) -> RunResult:
    """Train one model as configured. Returns where the run lives and the selected epoch's validation figures."""
    t_start = time.perf_counter()
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    on_cuda = device.type == "cuda"
    amp = cfg.run.amp and on_cuda or cfg.run.cpu_bf16 and not on_cuda
    channels_last = cfg.run.channels_last
    if not cfg.data.train or not cfg.data.val:
        raise InputError("data.train and data.val are required (packed .npz files or image-class folders)")
    seed_everything(cfg.run.seed)
    save_config(cfg, out / "config.yaml")

    model = build_model(cfg)
    if cfg.run.init_from:
        init_weights(model, cfg.run.init_from)
    size, mean, std, gray = preprocessing(model)
    train, val = load_split(cfg.data.train, None), load_split(cfg.data.val, None)
    if cfg.data.soft_targets and train.soft is None:
        raise InputError(f"data.soft_targets is set but {cfg.data.train} has no soft targets (pack it from FER+ votes)")
    train = mix_folder_labels(train, cfg.data.folder_label_weight)
    log.info("%s: %d parameters, input %d (%s), %d train / %d val images, device %s", cfg.model.name,
             sum(p.numel() for p in model.parameters()), size, "gray" if gray else "rgb", len(train), len(val),
             device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    distiller = build_distiller(cfg, model, _sample(train, 1024, cfg.run.seed), device)
    if distiller is not None:  # the projector learns with the head's learning rate
        if channels_last:
            distiller.to(memory_format=torch.channels_last)
        optimizer.add_param_group({"params": list(distiller.projector.parameters())})
    masked = build_fcmae(cfg, model, device)
    if masked is not None:  # the decoder learns with the head's learning rate
        optimizer.add_param_group({"params": list(masked.parameters())})
    if cfg.loss.target_weight == 0:
        log.info("%s pretraining: the label head does not train, so validation accuracy says nothing here; "
                 "start the fine-tune from %s", "feature" if distiller is not None else "FCMAE", out / "last.pt")
    weights = class_balanced_weights(train.labels) if cfg.data.weighted_sampling else None
    loader = BatchLoader(train, cfg.data.batch_size, shuffle=True, drop_last=len(train) > cfg.data.batch_size,
                         sample_weights=weights, seed=cfg.run.seed, device=str(device))
    steps = len(loader) if not cfg.run.max_steps else min(cfg.run.max_steps, len(loader))
    o = cfg.optim
    sched_opt = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer  # SAM steps its base
    scheduler = torch.optim.lr_scheduler.LambdaLR(sched_opt, lr_lambda(
        o.scheduler, cfg.run.epochs, steps, gamma=o.gamma, warmup_epochs=o.warmup_epochs,
        min_lr_ratio=o.min_lr / o.lr if o.lr else 0.0))
    augment = BatchAugment(cfg.augment, size, mean, std, gray=gray, seed=cfg.run.seed)
    ema = ModelEma(model, cfg.run.ema_decay) if cfg.run.ema else None
    teacher = load_teacher(cfg, model, device, channels_last)
    step_opts = StepOptions(label_smoothing=cfg.loss.label_smoothing, teacher=teacher,
                            distill_weight=cfg.loss.distill_weight, distill_temperature=cfg.loss.distill_temperature,
                            class_weights=_class_weight_tensor(cfg, train, device),
                            features=distiller, feature_weight=cfg.loss.feature_weight,
                            target_weight=cfg.loss.target_weight, masked=masked, mask_weight=cfg.loss.mask_weight,
                            attention_weight=cfg.loss.attention_weight, soft_targets=cfg.data.soft_targets,
                            grad_clip=o.grad_clip, amp=amp, channels_last=channels_last, max_steps=cfg.run.max_steps,
                            progress=cfg.run.progress)
    meta = checkpoint_meta(model, cfg)

    start_epoch, best_score, best_epoch = 1, -1.0, 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    runlog = RunLog(out, resume=cfg.run.resume and last_path.is_file())
    if cfg.run.resume and last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None and "ema_updates" in state:
            ema.module.load_state_dict(state["ema"])
            ema.updates = int(state["ema_updates"])
        elif ema is not None:  # a checkpoint from before the EMA warm-up (or without EMA): average afresh from here
            ema.restart(model)
            log.info("weight EMA restarted from the resumed weights")
        if distiller is not None and state.get("feature_head") is not None:
            distiller.load_head_state(state["feature_head"])
        if masked is not None and state.get("mask_head") is not None:
            masked.load_head_state(state["mask_head"])
        augment.generator.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
        runlog.truncate(state["epoch"])
        log.info("resumed from %s at epoch %d (best %.4f at epoch %d)", last_path, state["epoch"], best_score,
                 best_epoch)
    elif cfg.run.resume:
        log.info("no %s to resume from; starting fresh", last_path)

    epoch_times: list[float] = []
    for epoch in range(start_epoch, cfg.run.epochs + 1):
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        stats = train_one_epoch(model, loader, augment, optimizer, scheduler, step_opts, epoch=epoch, ema=ema)
        eval_model = ema.module if ema is not None else model
        logits = predict_logits(eval_model, val, size, mean, std, gray=gray, batch_size=cfg.data.eval_batch_size,
                                tta_flip=cfg.run.tta_flip, amp=amp, channels_last=channels_last)
        res = ClassificationMetrics().update(logits, val.labels).compute()
        row = {"epoch": epoch, **stats, "val_loss": nll(logits, val.labels), "val_accuracy": res.accuracy,
               "val_mean_class_accuracy": res.mean_class_accuracy, "epoch_seconds": time.perf_counter() - t0}
        score = getattr(res, cfg.run.select_metric)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            _save(best_path, {**meta, "model": eval_model.state_dict(), "epoch": epoch,
                              "metrics": {"accuracy": res.accuracy, "mean_class_accuracy": res.mean_class_accuracy}})
            np.savez(out / "val_logits.npz", logits=logits, labels=val.labels)
        row["best_epoch"] = best_epoch
        runlog.append(row)
        runlog.plot()
        _save(last_path, {**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "ema": ema.module.state_dict() if ema else None,
                          "ema_updates": ema.updates if ema else 0,
                          "augment_rng": augment.generator.get_state(), "torch_rng": torch.get_rng_state(),
                          "feature_head": distiller.head_state() if distiller is not None else None,
                          "mask_head": masked.head_state() if masked is not None else None,
                          "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch})
        log.info("epoch %d/%d: loss %.4f, val acc %.4f, mean-class %.4f%s (%.0f s)", epoch, cfg.run.epochs,
                 stats["train_loss"], res.accuracy, res.mean_class_accuracy, " *" if improved else "",
                 row["epoch_seconds"])
        epoch_times.append(row["epoch_seconds"])
        budget = cfg.run.time_budget_min * 60
        if budget and epoch < cfg.run.epochs and \
                time.perf_counter() - t_start + float(np.mean(epoch_times)) > budget:
            log.warning("stopping after epoch %d: another epoch would exceed run.time_budget_min=%.1f", epoch,
                        cfg.run.time_budget_min)
            break

    return finish(cfg, out, best_path, best_epoch, best_score, val, device, time.perf_counter() - t_start)


def finish(cfg: TrainConfig, out: Path, best_path: Path, best_epoch: int, best_score: float, val: Packed,
           device: torch.device, seconds: float) -> RunResult:
    """Reload the selected checkpoint; write the validation report and, when configured, the one test report."""
    model, ckpt = load_checkpoint(best_path)
    model.to(device)
    size, mean, std, gray = preprocessing(model)
    kw = dict(gray=gray, batch_size=cfg.data.eval_batch_size, tta_flip=cfg.run.tta_flip)
    val_logits = predict_logits(model, val, size, mean, std, **kw)
    val_report = evaluate_logits(val_logits, val.labels, split="val")
    write_report(val_report, out, "val", title=cfg.model.name)
    test = None
    if cfg.data.test:
        test_data = load_split(cfg.data.test, None)
        test_logits = predict_logits(model, test_data, size, mean, std, **kw)
        test_report = evaluate_logits(test_logits, test_data.labels, split="test",
                                      temperature=val_report.temperature)
        write_report(test_report, out, "test", title=cfg.model.name)
        np.savez(out / "test_logits.npz", logits=test_logits, labels=test_data.labels)
        test = {"accuracy": test_report.classification.accuracy,
                "mean_class_accuracy": test_report.classification.mean_class_accuracy}
    val_summary = {"accuracy": val_report.classification.accuracy,
                   "mean_class_accuracy": val_report.classification.mean_class_accuracy,
                   "temperature": val_report.temperature}
    log.info("%s: best epoch %d, val acc %.4f, mean-class %.4f (%.0f s)", cfg.model.name, best_epoch,
             val_summary["accuracy"], val_summary["mean_class_accuracy"], seconds)
    return RunResult(out, best_epoch, best_score, val_summary, test, seconds)

