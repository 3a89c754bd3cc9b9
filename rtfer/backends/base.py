"""The one small interface every inference backend implements."""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np


class Backend(abc.ABC):
    """Runs one exported member network: float32 NCHW batch in, (n, classes) logits out.

    Subclasses import their SDK (onnxruntime, torch, tensorrt) inside ``load`` so that importing rtfer stays light.
    """

    name: str = "base"

    def __init__(self, model_path: str | Path, *, device: str = "cpu", member: dict | None = None,
                 allow_fallback: bool = False, max_batch: int = 64, precision: str = "auto") -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.member = member or {}
        self.allow_fallback = allow_fallback
        self.max_batch = int(max_batch)
        self.input_size = int(self.member.get("input_size", 112))
        self.active_device = device  # what really runs after load(), e.g. "cuda:0" or "cpu"
        # what the bundle resolved (rtfer.bundle.resolve_precision): fp32 / fp16 / int8, or "auto" = the backend's own
        self.precision = precision

    @abc.abstractmethod
    def load(self) -> None:
        """Create the session / module / engine. Raise BackendError when the device is unavailable."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 -> (n, C) float32 logits. ``n`` may be 0 or larger than max_batch."""

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        for n in batch_sizes:
            self.infer(np.zeros((n, 3, self.input_size, self.input_size), np.float32))

    def describe(self) -> str:
        return f"{self.name} on {self.active_device}"

    def _chunks(self, batch: np.ndarray):
        for start in range(0, len(batch), self.max_batch):
            yield batch[start:start + self.max_batch]
