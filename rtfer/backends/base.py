"""The one small interface every inference backend implements."""
from __future__ import annotations

import abc
import functools
import threading
from pathlib import Path

import numpy as np


class Backend(abc.ABC):
    """Runs one exported member network: float32 NCHW batch in, (n, classes) logits out.

    Subclasses import their SDK (onnxruntime, torch, tensorrt) inside ``load`` so that importing rtfer stays light.

    One thread at a time: backends reuse buffers between calls (TensorRT's input binding, CUDA-graph inputs), so
    every subclass's ``infer`` is wrapped to hold this backend's lock. An uncontended (re-entrant) lock costs well
    under a microsecond per call; a second thread entering at the same time waits instead of overwriting the
    first one's input.
    """

    name: str = "base"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        infer = cls.__dict__.get("infer")
        if infer is not None and not getattr(infer, "__isabstractmethod__", False):
            cls.infer = _one_thread_at_a_time(infer)

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
        self._infer_lock = threading.RLock()  # see the class docstring

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


def _one_thread_at_a_time(infer):
    """Wrap a backend's ``infer`` so that two threads never run it on the same backend at once."""
    if getattr(infer, "_rtfer_guarded", False):
        return infer

    @functools.wraps(infer)
    def guarded(self: Backend, batch: np.ndarray) -> np.ndarray:
        with self._infer_lock:
            return infer(self, batch)

    guarded._rtfer_guarded = True  # type: ignore[attr-defined]
    return guarded
