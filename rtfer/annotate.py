"""Draw faces, track ids and labels onto a frame (annotated video, summary colours and the desktop UI)."""
from __future__ import annotations

import logging

import numpy as np

from rtfer.labels import CLASSES, scale_levels, to_scale

log = logging.getLogger(__name__)

#: BGR colour per emotion (shared by the annotated video, the summary plot and the UI).
EMOTION_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "surprise": (0, 200, 255),    # amber
    "fear": (180, 80, 150),       # purple
    "disgust": (40, 140, 40),     # green
    "happiness": (0, 220, 120),   # bright green-yellow
    "sadness": (200, 110, 30),    # blue
    "anger": (40, 40, 230),       # red
    "neutral": (170, 170, 170),   # grey
}
#: BGR colour per sentiment level (red = negative ... green = positive).
LEVEL_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "very_negative": (30, 30, 200),
    "negative": (60, 120, 240),
    "neutral": (170, 170, 170),
    "positive": (80, 200, 120),
    "very_positive": (40, 200, 40),
}
UNTRACKED_COLOR_BGR = (255, 255, 255)
SCALES = ("emotion", "sentiment5", "sentiment3")


def color_rgb01(name: str) -> tuple[float, float, float]:
    """Matplotlib colour (RGB in [0, 1]) for an emotion or sentiment level."""
    b, g, r = EMOTION_COLORS_BGR.get(name) or LEVEL_COLORS_BGR.get(name) or UNTRACKED_COLOR_BGR
    return r / 255.0, g / 255.0, b / 255.0


def face_labels(probs: np.ndarray, scale: str = "emotion") -> tuple[list[str], np.ndarray]:
    """(label, confidence) per row of ``probs`` (n, 7) on ``scale`` ("emotion", "sentiment5" or "sentiment3")."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(CLASSES))
    if scale == "emotion":
        names, p = CLASSES, probs
    elif scale in ("sentiment5", "sentiment3"):
        names, p = scale_levels(scale), to_scale(probs, scale)
    else:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    idx = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    return [names[i] for i in idx], (p[np.arange(len(p)), idx] if len(p) else np.zeros(0, np.float32))


def annotate(image_bgr: np.ndarray, result, scale: str = "emotion", *, copy: bool = True) -> np.ndarray:
    """Draw each face of ``result`` (a FrameResult): box, ``#track`` id, label and confidence (smoothed scores).

    Returns a new image unless ``copy=False``. Boxes are coloured by the label; untracked faces show no id.
    """
    import cv2

    image = np.array(image_bgr, copy=True) if copy else image_bgr
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"annotate needs an HxWx3 uint8 BGR image, got {image.shape} {image.dtype}")
    faces = result.faces
    if len(faces) == 0:
        return image
    labels, confs = face_labels(result.smoothed.probs, scale)
    h, w = image.shape[:2]
    thickness = max(1, int(round(min(h, w) / 360)))
    font_scale = max(0.35, min(h, w) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for (x1, y1, x2, y2), tid, label, conf in zip(faces.xyxy, faces.track_ids, labels, confs):
        color = EMOTION_COLORS_BGR.get(label) or LEVEL_COLORS_BGR.get(label, UNTRACKED_COLOR_BGR)
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (int(round(x2)), int(round(y2)))
        cv2.rectangle(image, p1, p2, color, thickness, cv2.LINE_AA)
        text = f"{'#%d ' % tid if tid >= 0 else ''}{label} {conf:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
        ty = p1[1] - 4 if p1[1] - th - base - 4 >= 0 else p2[1] + th + base + 4
        tx = min(max(p1[0], 0), max(0, w - tw - 2))
        cv2.rectangle(image, (tx, ty - th - base), (tx + tw + 2, ty + base - 2), color, cv2.FILLED)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(image, text, (tx + 1, ty - 2), font, font_scale, text_color, thickness, cv2.LINE_AA)
    return image
