"""One parser for device strings: ``cpu``, ``cuda``, ``cuda:N``, ``tensorrt[:N]`` (ONNX Runtime's TensorRT provider) and
``gpu[:N]`` (an alias of cuda). Every backend and the detector read devices through :func:`parse_device`.
"""
from __future__ import annotations

from dataclasses import dataclass

from rtfer.errors import BackendError

KINDS = ("cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class Device:
    """A parsed device: ``kind`` in KINDS and the GPU ``index`` (0 for the CPU)."""

    kind: str
    index: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


def parse_device(spec: str | Device) -> Device:
    """``"cuda:1"`` -> Device("cuda", 1). ``auto`` is resolved elsewhere (rtfer.backends.resolve); anything else
    that is not a device is a BackendError with one line saying what is accepted."""
    if isinstance(spec, Device):
        return spec
    text = str(spec).strip().lower()
    kind, sep, index = text.partition(":")
    kind = "cuda" if kind == "gpu" else kind
    if kind in KINDS and not (kind == "cpu" and sep):
        if not sep:
            return Device(kind, 0)
        if index.isdigit():
            return Device(kind, int(index))
    raise BackendError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or tensorrt[:N]")


__all__ = ["Device", "KINDS", "parse_device"]
