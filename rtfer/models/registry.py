"""The model registry (``create_model``, ``register_model``...); ``rtfer.models`` re-exports it.

``create_model(name, num_classes=7, **kwargs)`` builds a registered network. Every model's ``forward(x)`` returns
logits (n, num_classes); models with auxiliary outputs also offer ``forward_train(x) -> dict(logits=..., ...)``.
Each model carries ``default_cfg`` (input_size, mean, std, color) that export copies into bundle.json.

Model modules register themselves by importing this module (not their own package), so there is no import cycle.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: kwargs that choose initial weights, not the architecture; not recorded in ``model.arch_kwargs``.
_WEIGHT_KWARGS = frozenset({"pretrained", "pretrained_path"})
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
#: Name patterns served by a factory that takes the name as its first argument (e.g. any timm convnextv2 variant).
_PATTERNS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its ``__name__`` (decorator). ``fn(num_classes=..., **kwargs) -> nn.Module``."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def register_pattern(pattern: str, factory: Callable[..., nn.Module]) -> None:
    """Serve every name matching the glob ``pattern`` with ``factory(name, num_classes=..., **kwargs)``."""
    _PATTERNS[pattern] = factory


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the glob ``pattern`` (pattern-served names are listed by their factory)."""
    _import_builtin()
    names = set(_REGISTRY)
    for factory in _PATTERNS.values():
        names.update(getattr(factory, "names", lambda: [])())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _import_builtin()
    return name in _REGISTRY or any(fnmatch.fnmatch(name, p) for p in _PATTERNS)


def create_model(name: str, num_classes: int = 7, **kwargs) -> nn.Module:
    """Build the registered network ``name`` with ``num_classes`` outputs; ``kwargs`` go to its factory."""
    _import_builtin()
    if name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    else:
        for pattern, factory in _PATTERNS.items():
            if fnmatch.fnmatch(name, pattern):
                model = factory(name, num_classes=num_classes, **kwargs)
                break
        else:
            close = difflib.get_close_matches(name, list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})")
    model.architecture = name
    # What rebuilds the same architecture (weights come from elsewhere, so never a download flag).
    model.arch_kwargs = {k: v for k, v in kwargs.items() if k not in _WEIGHT_KWARGS}
    return model


def default_cfg(model: nn.Module) -> dict:
    """The model's preprocessing metadata: input_size, mean, std, color."""
    cfg = getattr(model, "default_cfg", None)
    if not cfg:
        raise ValueError(f"{type(model).__name__} has no default_cfg")
    return dict(cfg)


def inference_state_keys(model: nn.Module, input_size: int | None = None) -> list[str]:
    """The state_dict keys an eval-mode forward pass really uses, in state_dict order.

    Leaves out BatchNorm ``num_batches_tracked`` counters and the tensors of submodules that ``forward`` never
    calls (the DDAMFN reference keeps a few such modules so its checkpoints load). These are exactly the weights
    an ONNX export stores, so the torch backend can rebuild a module from an ONNX file strictly.
    """
    size = int(input_size or default_cfg(model)["input_size"])
    called: set[str] = set()
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: called.add(names[mod])) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    keys = []
    for key in model.state_dict():
        owner, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if owner in called:
            keys.append(key)
    return keys


def _import_builtin() -> None:
    """Import the modules that register the built-in models (deferred: they import this module to register)."""
    import importlib

    for name in ("rtfer.models.convnext", "rtfer.models.ddamfn", "rtfer.models.baselines", "rtfer.models.faceres"):
        importlib.import_module(name)


__all__ = ["create_model", "default_cfg", "inference_state_keys", "is_model", "list_models", "register_model",
           "register_pattern"]
