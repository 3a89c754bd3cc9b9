"""SCRFD detector (insightface det_10g / det_2.5g / det_500m ONNX files from a model pack), on onnxruntime.

We never download weights: the file is looked up in ``$RTFER_SCRFD_MODEL`` (a file, or a folder holding
det_*.onnx), then ``~/.insightface/models/*/det_*.onnx``. SCRFD's outputs follow insightface's fixed order:
scores for strides 8/16/32, then box distances, then keypoint distances (9 outputs, 2 anchors per cell); we
validate each output's shape against that order rather than guess roles from shapes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtfer.detection.base import Detector, DetectorOptions, ort_providers
from rtfer.errors import BackendError

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
#: Preference order when several model files are present (most accurate first).
MODEL_NAMES = ("det_10g.onnx", "det_2.5g.onnx", "det_500m.onnx")
ENV_VAR = "RTFER_SCRFD_MODEL"
HINT = (f"SCRFD model not found: put insightface's det_10g.onnx (or det_2.5g / det_500m) in "
        f"~/.insightface/models/<pack>/ or point ${ENV_VAR} at it")


def _pick(files: list[Path]) -> Path | None:
    for name in MODEL_NAMES:
        for f in files:
            if f.name == name:
                return f
    return sorted(files)[0] if files else None


def find_model(model_path: str | os.PathLike | None = None) -> Path | None:
    """The SCRFD ONNX file to use, or None: ``model_path``, then $RTFER_SCRFD_MODEL, then
    ~/.insightface/models/*/det_*.onnx (det_10g preferred, then det_2.5g, det_500m)."""
    for candidate in (model_path, os.environ.get(ENV_VAR)):
        if candidate:
            p = Path(candidate).expanduser()
            if p.is_file():
                return p
            if p.is_dir():
                found = _pick(list(p.glob("det_*.onnx")))
                if found:
                    return found
    root = Path("~/.insightface/models").expanduser()
    return _pick(list(root.glob("*/det_*.onnx"))) if root.is_dir() else None


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
    """(height*width*num_anchors, 2) x, y pixel centres of the cells of a stride-``stride`` map, row-major, each
    repeated per anchor (the order SCRFD's flattened outputs use)."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes from centres (m,2) and (left, top, right, bottom) distances (m,4) in pixels."""
    return np.concatenate([points - distance[:, :2], points + distance[:, 2:4]], axis=1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints (m,k,2) from centres (m,2) and (dx, dy) offsets (m, 2k) in pixels."""
    return points[:, None, :] + distance.reshape(len(distance), -1, 2)


def decode(outputs: list[np.ndarray], height: int, width: int,
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode SCRFD's 9 outputs for one (height, width) input into boxes (m,4), landmarks (m,5,2), scores (m,).

    Output i (i < 3) holds scores for stride STRIDES[i], output 3+i box distances and 6+i keypoint distances,
    all in units of the stride, flattened as (cells * anchors, C), optionally with a leading batch axis of 1.
    """
    if len(outputs) != 3 * len(STRIDES):
        raise BackendError(f"SCRFD model has {len(outputs)} outputs; rtfer supports the 9-output (with keypoints) "
                           f"det_10g / det_2.5g / det_500m files")
    boxes, kps, scores = [], [], []
    for i, stride in enumerate(STRIDES):
        fh, fw = -(-height // stride), -(-width // stride)
        n = fh * fw * NUM_ANCHORS
        parts = []
        for k, channels in ((i, 1), (i + 3, 4), (i + 6, 10)):
            out = np.asarray(outputs[k])
            if out.ndim == 3:
                out = out[0]
            if out.shape != (n, channels):
                raise BackendError(f"SCRFD output {k} has shape {out.shape}, expected ({n}, {channels}) for a "
                                   f"{width}x{height} input at stride {stride}")
            parts.append(out)
        s, d, k_ = parts
        pos = np.nonzero(s[:, 0] >= threshold)[0]
        if len(pos) == 0:
            continue
        centers = anchor_centers(fh, fw, stride)[pos]
        boxes.append(distance2bbox(centers, d[pos] * stride))
        kps.append(distance2kps(centers, k_[pos] * stride))
        scores.append(s[pos, 0])
    if not scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(kps).astype(np.float32),
            np.concatenate(scores).astype(np.float32))


@dataclass
class SCRFDOptions(DetectorOptions):
    """DetectorOptions plus ``model_path`` (default: found by :func:`find_model`)."""

    model_path: str | None = None


class SCRFD(Detector):
    """insightface SCRFD on onnxruntime. Input: RGB, (x - 127.5) / 128, sides multiple of 32."""

    name = "scrfd"
    options_class = SCRFDOptions

    def _load(self) -> None:
        import onnxruntime as ort

        from rtfer.backends.onnxruntime import session_options

        path = find_model(self.options.model_path)
        if path is None:
            raise BackendError(HINT)
        so = session_options(self.options.threads)
        providers = ort_providers(self.options.device, self.options.allow_fallback)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # a corrupt / foreign file: one line for the user
            raise BackendError(f"cannot load SCRFD model {path}: {exc}") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 3 * len(STRIDES):
            raise BackendError(f"{path} has {len(self.output_names)} outputs; rtfer supports the 9-output SCRFD "
                               f"files with keypoints (det_10g, det_2.5g, det_500m)")
        self.model_path = path
        log.info("SCRFD loaded from %s on %s", path, self.providers[0])

    def _infer(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image_bgr.shape[:2]
        blob = (image_bgr[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) - 127.5) * (1.0 / 128.0)
        outputs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(blob)})
        return decode(outputs, h, w, self.options.score_threshold)
