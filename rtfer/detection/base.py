"""The face-detector interface: options, shared pre/post-processing and NMS.

A detector turns one BGR frame into :class:`rtfer.types.Faces` in full-frame pixel coordinates. Subclasses only
implement ``_load`` (create the session) and ``_infer`` (run the network on a downscaled, padded image and decode
raw candidates); resizing, thresholds, NMS, the minimum face size, the face cap and the mapping back to the frame
live here so every detector behaves the same way.
"""
from __future__ import annotations

import abc
import dataclasses
import difflib
import logging
import time
from dataclasses import dataclass

import numpy as np

from rtfer.errors import BackendError
from rtfer.types import Faces

log = logging.getLogger(__name__)


@dataclass
class DetectorOptions:
    """Options shared by every detector.

    - ``det_width``: the frame is downscaled (never upscaled) to this width before detection; smaller is faster but
      misses small faces (a face must be roughly >= 10-16 px wide *at detection scale* to be found).
    - ``score_threshold``: candidates scoring below it are dropped (0.5 keeps real faces and rejects most
      texture false positives for both CenterFace and SCRFD; lower it for tiny/blurred faces).
    - ``min_face``: minimum box side (the shorter of width and height) in original-frame pixels; smaller boxes are
      dropped because emotion classifiers are unreliable on them.
    - ``max_faces``: keep at most this many faces, the highest-scoring ones.
    - ``nms_iou``: candidates overlapping a higher-scoring one with IoU >= this are suppressed.
    - ``device``: "cpu" or "cuda" ("cuda" raises BackendError when unavailable unless ``allow_fallback``).
    - ``threads``: intra-op threads for the CPU provider (0 = rtfer.backends.onnxruntime.default_threads():
      $RTFER_ORT_THREADS, which batch workers set so that N processes share the cores, else half the cores).
    """

    det_width: int = 640
    score_threshold: float = 0.5
    min_face: float = 20.0
    max_faces: int = 50
    nms_iou: float = 0.4
    device: str = "cpu"
    allow_fallback: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        if int(self.det_width) < 32:
            raise ValueError(f"det_width must be >= 32, got {self.det_width}")
        if not 0.0 <= float(self.score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if int(self.max_faces) < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")


def make_options(cls: type[DetectorOptions], options: DetectorOptions | None, overrides: dict) -> DetectorOptions:
    """Build ``cls`` from an optional base instance plus keyword overrides; unknown keys raise with a suggestion."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown detector option {key!r}{hint}; valid: {', '.join(names)}")
    base = {} if options is None else {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                                       if f.name in names}
    base.update(overrides)
    return cls(**base)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ovr < iou]
    return np.asarray(keep, np.int64)


def ort_providers(device: str, allow_fallback: bool) -> list:
    """onnxruntime providers for ``device`` (``cuda:N`` selects GPU N); a requested GPU that is missing raises unless
    fallback was asked for."""
    import onnxruntime as ort

    from rtfer.devices import parse_device

    available = ort.get_available_providers()
    try:
        parsed = parse_device(device)
    except BackendError:
        raise BackendError(f"unknown detector device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.is_gpu:
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": parsed.index}), "CPUExecutionProvider"]
        if not allow_fallback:
            raise BackendError(f"detector device {device!r} requested but onnxruntime has no CUDAExecutionProvider "
                               f"(available: {', '.join(available)})")
        log.warning("CUDAExecutionProvider unavailable; detector falls back to CPU")
    return ["CPUExecutionProvider"]


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Accept HxWx3 BGR (returned as is) or HxW gray (converted); reject anything else with a clear error."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"detector input must be uint8, got {image.dtype}")
    if image.ndim == 2:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detector input must be HxWx3 BGR or HxW gray, got shape {image.shape}")
    return image


class Detector(abc.ABC):
    """Base face detector. ``detect(image_bgr) -> Faces`` with boxes, 5 landmarks (left eye, right eye, nose, left
    mouth, right mouth as seen in the image) and scores, all in full-frame pixels.

    The model is loaded and warmed up in ``__init__`` so that ``detect`` timings never include loading.
    ``timings_ms`` holds the preprocess / infer / postprocess split of the last call.
    """

    name: str = "base"
    options_class: type[DetectorOptions] = DetectorOptions
    #: Network input sides must be multiples of this (the padded detection image is rounded up to it).
    stride_multiple: int = 32

    def __init__(self, options: DetectorOptions | None = None, **overrides) -> None:
        self.options = make_options(self.options_class, options, overrides)
        self.timings_ms: dict[str, float] = {}
        self.providers: list[str] = []
        self._load()
        self.warmup()

    # -- subclass hooks ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Create the inference session; raise BackendError when the model or device is unavailable."""

    @abc.abstractmethod
    def _infer(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run on a padded detection image (sides multiples of ``stride_multiple``) and return candidates in its
        pixel coordinates: boxes (m,4), landmarks (m,5,2), scores (m,), already filtered by score_threshold."""

    # -- public -----------------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """One inference on a blank frame so that the first real call is not slowed by lazy initialisation."""
        w = int(self.options.det_width)
        self.detect(np.zeros((max(32, w * 9 // 16), w, 3), np.uint8))

    def describe(self) -> str:
        provider = self.providers[0] if self.providers else "?"
        return f"{self.name} (det_width={self.options.det_width}, {provider})"

    def detection_size(self, width: int, height: int, det_width: int | None = None) -> tuple[int, int, float]:
        """(width, height, scale) of the resized frame fed to the network: downscaled to ``det_width`` (default the
        detector's own), never up."""
        scale = min(1.0, float(det_width or self.options.det_width) / float(width))
        return max(1, int(round(width * scale))), max(1, int(round(height * scale))), scale

    def detect(self, image_bgr: np.ndarray, det_width: int | None = None) -> Faces:
        """Detect faces in one BGR frame (gray is accepted and converted). Returns Faces in frame pixels.
        ``det_width`` overrides the detection width for this call (the pipeline lowers it while faces are large)."""
        import cv2

        t0 = time.perf_counter()
        image = to_bgr(image_bgr)
        h, w = image.shape[:2]
        dw, dh, scale = self.detection_size(w, h, det_width)
        small = image if scale == 1.0 else cv2.resize(image, (dw, dh), interpolation=cv2.INTER_AREA)
        m = self.stride_multiple
        pw, ph = -(-dw // m) * m, -(-dh // m) * m
        if (pw, ph) != (dw, dh):  # pad bottom/right so that scale stays exact in x and y
            small = cv2.copyMakeBorder(small, 0, ph - dh, 0, pw - dw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        t1 = time.perf_counter()
        boxes, lms, scores = self._infer(np.ascontiguousarray(small))
        t2 = time.perf_counter()
        faces = self._postprocess(boxes, lms, scores, scale, w, h)
        t3 = time.perf_counter()
        self.timings_ms = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        return faces

    __call__ = detect

    def _postprocess(self, boxes: np.ndarray, lms: np.ndarray, scores: np.ndarray, scale: float,
                     width: int, height: int) -> Faces:
        o = self.options
        if len(boxes) == 0:
            return Faces.empty()
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        lms = np.asarray(lms, np.float32).reshape(-1, 5, 2)
        scores = np.asarray(scores, np.float32).reshape(-1)
        keep = scores >= o.score_threshold
        boxes, lms, scores = boxes[keep], lms[keep], scores[keep]
        keep = nms(boxes, scores, o.nms_iou)
        boxes, lms, scores = boxes[keep] / scale, lms[keep] / scale, scores[keep]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = side >= o.min_face
        boxes, lms, scores = boxes[keep], lms[keep], scores[keep]
        if len(scores) > o.max_faces:  # nms already sorted by score
            boxes, lms, scores = boxes[:o.max_faces], lms[:o.max_faces], scores[:o.max_faces]
        return Faces(boxes, lms, scores)
