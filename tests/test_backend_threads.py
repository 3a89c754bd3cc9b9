"""A backend is never entered from two threads at once (backends reuse their input buffers between calls)."""
from __future__ import annotations

import threading

import numpy as np

from rtfer.backends.base import Backend


class _Probe(Backend):
    """Counts how many threads are inside ``infer``; the first call waits until the test releases it."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__("probe.onnx")
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def load(self) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        self.release.wait(10)
        self.inside -= 1
        return np.full((len(batch), 7), float(len(batch)), np.float32)


class _Nested(_Probe):
    """A subclass that calls its parent's (also guarded) infer: the lock is re-entrant."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return super().infer(batch) + 1


def test_a_second_thread_waits_for_the_first():
    probe = _Probe()
    out: dict[str, np.ndarray] = {}

    def call(name: str, n: int) -> None:
        out[name] = probe.infer(np.zeros((n, 3, 112, 112), np.float32))

    first = threading.Thread(target=call, args=("first", 2))
    first.start()
    assert probe.entered.wait(10)
    second = threading.Thread(target=call, args=("second", 3))
    second.start()
    second.join(0.1)  # unguarded, the second call would be inside now, next to the first
    assert probe.inside == 1 and second.is_alive()
    probe.release.set()
    first.join(10)
    second.join(10)
    assert probe.most_inside == 1
    assert out["first"].shape == (2, 7) and out["second"].shape == (3, 7) and out["second"][0, 0] == 3


def test_guard_is_reentrant_and_on_every_registered_backend():
    nested = _Nested()
    nested.release.set()
    assert nested.infer(np.zeros((1, 3, 112, 112), np.float32))[0, 0] == 2
    nested.warmup((1, 2))  # warmup calls infer on the same thread

    from rtfer.backends import BACKENDS, backend_class

    for name in BACKENDS:
        assert getattr(backend_class(name).infer, "_rtfer_guarded", False), name
