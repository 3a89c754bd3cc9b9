"""Helpers that build test media from real faces (imported by tests; not a test module)."""
from __future__ import annotations


def pan_frames(photo, n: int, width: int = 640, out_width: int = 320, step: int = 8, start: int = 0):
    """Frames panning across ``photo`` (real faces moving slowly), downscaled to ``out_width``."""
    import cv2

    h, w = photo.shape[:2]
    out_h = int(round(h * out_width / width)) // 2 * 2
    for i in range(n):
        x = min(w - width, start + i * step)
        yield cv2.resize(photo[:, x:x + width], (out_width, out_h), interpolation=cv2.INTER_AREA)
