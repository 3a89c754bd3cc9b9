"""rtfer: real-time facial-emotion analytics.

Importing rtfer is light: torch, onnxruntime and tensorrt are imported inside the backends that need them.
"""
from __future__ import annotations

import logging

from rtfer.labels import CLASSES
from rtfer.types import EmotionScores, Faces, Frame, FrameResult

__version__ = "0.1.0"
__all__ = ["CLASSES", "EmotionScores", "Faces", "Frame", "FrameResult", "analyze", "load_bundle", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def load_bundle(name_or_path="default", backend: str = "auto", device: str = "auto", **kwargs):
    """Load a model bundle (see :func:`rtfer.bundle.load_bundle`)."""
    from rtfer.bundle import load_bundle as _load

    return _load(name_or_path, backend=backend, device=device, **kwargs)


def analyze(source, **kwargs):
    """Yield a :class:`FrameResult` per frame of ``source`` lazily (see :func:`rtfer.pipeline.analyze`)."""
    from rtfer.pipeline import analyze as _analyze

    return _analyze(source, **kwargs)
