"""Network definitions behind a small timm-style registry (``rtfer.models.registry``).

``create_model(name, num_classes=7, **kwargs)`` builds a registered network. Every model's ``forward(x)`` returns
logits (n, num_classes); models with auxiliary outputs also offer ``forward_train(x) -> dict(logits=..., ...)``.
Each model carries ``default_cfg`` (input_size, mean, std, color) that export copies into bundle.json.

Importing this package imports torch; ``import rtfer`` never imports it.
"""
from __future__ import annotations

from rtfer.models.registry import (create_model, default_cfg, inference_state_keys, is_model, list_models,
                                   register_model, register_pattern)

__all__ = ["create_model", "default_cfg", "inference_state_keys", "is_model", "list_models", "register_model",
           "register_pattern"]
