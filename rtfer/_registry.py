"""Resolve "module:Class" registry entries lazily, so heavy SDKs are imported only when a component is created."""
from __future__ import annotations

import importlib

from rtfer.errors import BackendError


def resolve_entry(registry: dict[str, str], name: str, kind: str):
    """The object registered as ``name``; an unknown name is a one-line BackendError listing the choices."""
    try:
        target = registry[name]
    except KeyError:
        raise BackendError(f"unknown {kind} {name!r}; choose from auto, {', '.join(registry)}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
