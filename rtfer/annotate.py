"""Draw faces, track ids and labels onto a frame (annotated video and the desktop UI).

Colours come from :mod:`rtfer.colors` (one map for the video, the summary plot, the report and the app). Label tags
are placed by :func:`place_tags` so that they never leave the frame and never overlap one another; a tag moved away
from its face is joined to the face by a thin leader line.
"""
from __future__ import annotations

import logging

import numpy as np

from rtfer.colors import EMOTION_COLORS_HEX, LEVEL_COLORS_HEX, color_bgr
from rtfer.labels import CLASSES, LABEL_SCALES, scale_levels, to_scale

log = logging.getLogger(__name__)

#: BGR colour per emotion (derived from rtfer.colors; shared by the annotated video, the plots and the UI).
EMOTION_COLORS_BGR: dict[str, tuple[int, int, int]] = {c: color_bgr(c) for c in EMOTION_COLORS_HEX}
#: BGR colour per sentiment level (purple = negative ... green = positive).
LEVEL_COLORS_BGR: dict[str, tuple[int, int, int]] = {c: color_bgr(c) for c in LEVEL_COLORS_HEX}
UNTRACKED_COLOR_BGR = (255, 255, 255)
SCALES = LABEL_SCALES  # the one list, in rtfer.labels


def face_labels(probs: np.ndarray, scale: str = "emotion") -> tuple[list[str], np.ndarray]:
    """(label, confidence) per row of ``probs`` (n, 7) on ``scale`` ("emotion", "sentiment5" or "sentiment3")."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(CLASSES))
    if scale == "emotion":
        names, p = CLASSES, probs
    elif scale in SCALES:
        names, p = scale_levels(scale), to_scale(probs, scale)
    else:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    idx = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    return [names[i] for i in idx], (p[np.arange(len(p)), idx] if len(p) else np.zeros(0, np.float32))


def _overlaps(rects: np.ndarray, placed: np.ndarray, pad: int) -> np.ndarray:
    """(m,) bool: which of ``rects`` (m, 4: x1 y1 x2 y2) overlap any of ``placed`` (k, 4), ``pad`` pixels apart."""
    if len(placed) == 0:
        return np.zeros(len(rects), dtype=bool)
    r, p = rects[:, None, :], placed[None, :, :]
    hit = ((r[..., 0] < p[..., 2] + pad) & (p[..., 0] < r[..., 2] + pad)
           & (r[..., 1] < p[..., 3] + pad) & (p[..., 1] < r[..., 3] + pad))
    return hit.any(axis=1)


def place_tags(boxes: np.ndarray, sizes: list[tuple[int, int]] | np.ndarray, width: int, height: int, *,
               pad: int = 1, occupied=None) -> list[tuple[int, int, int, int] | None]:
    """Tag rectangles ``(x1, y1, x2, y2)`` for face ``boxes`` (n, 4) and tag ``sizes`` (w, h) in a frame.

    Every tag lies inside the frame and overlaps no other tag (``pad`` pixels apart). A tag goes above its box if it
    can, else below, else inside the box's top; when all of those are taken, the free position nearest to the spot
    above the box is searched on a grid. Faces are placed top to bottom. A tag that fits nowhere (the frame is full
    of tags, or it is wider or taller than the frame) is None. ``occupied``: rectangles already taken (tags placed
    earlier), which the new tags avoid as well.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out: list[tuple[int, int, int, int] | None] = [None] * len(boxes)
    placed = np.asarray(occupied if occupied is not None and len(occupied) else np.zeros((0, 4)),
                        dtype=np.int64).reshape(-1, 4)
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i, 1], boxes[i, 0]))
    for i in order:
        tw, th = (int(v) for v in sizes[i])
        if tw > width or th > height:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        max_x, max_y = width - tw, height - th
        cands = [(x1, y1 - th - 1), (x1, y2 + 2), (x1, y1 + 1), (x2 - tw, y1 - th - 1), (x2 - tw, y2 + 2)]
        rects = np.array([(min(max(x, 0), max_x), min(max(y, 0), max_y)) for x, y in cands], dtype=np.int64)
        rects = np.concatenate([rects, rects + [tw, th]], axis=1)
        free = ~_overlaps(rects, placed, pad)
        if free.any():
            chosen = rects[int(np.argmax(free))]
        else:
            xs = np.unique(np.clip(np.concatenate([np.arange(0, max_x + 1, max(1, tw // 4)), [max_x]]), 0, max_x))
            ys = np.unique(np.clip(np.concatenate([np.arange(0, max_y + 1, max(1, th // 2)), [max_y]]), 0, max_y))
            gx, gy = np.meshgrid(xs, ys)
            grid = np.stack([gx.ravel(), gy.ravel(), gx.ravel() + tw, gy.ravel() + th], axis=1)
            ok = ~_overlaps(grid, placed, pad)
            if not ok.any():
                continue
            grid = grid[ok]
            ax, ay = min(max(x1, 0), max_x), min(max(y1 - th - 1, 0), max_y)
            chosen = grid[int(np.argmin(np.hypot(grid[:, 0] - ax, grid[:, 1] - ay)))]
        out[i] = tuple(int(v) for v in chosen)
        placed = np.concatenate([placed, chosen[None]], axis=0)
    return out


def annotate(image_bgr: np.ndarray, result, scale: str = "emotion", *, copy: bool = True) -> np.ndarray:
    """Draw each face of ``result`` (a FrameResult): box, ``#track`` id, label and confidence (smoothed scores).

    Returns a new image unless ``copy=False``. Boxes are coloured by the label; untracked faces show no id. Tags
    neither overlap nor leave the frame (:func:`place_tags`); when a crowded frame has no room for a full tag, the
    tag shrinks to the face's id, and a face whose tag still fits nowhere keeps only its box.
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
    colors = [EMOTION_COLORS_BGR.get(label) or LEVEL_COLORS_BGR.get(label, UNTRACKED_COLOR_BGR) for label in labels]
    texts = [f"{'#%d ' % tid if tid >= 0 else ''}{label} {conf:.2f}"
             for tid, label, conf in zip(faces.track_ids, labels, confs)]
    shorts = [f"#{tid}" if tid >= 0 else label[:3] for tid, label in zip(faces.track_ids, labels)]

    def measure(text: str) -> tuple[int, int, int]:
        (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
        return tw + 4, th + base + 3, base

    metrics = [measure(t) for t in texts]
    rects = place_tags(faces.xyxy, [(m[0], m[1]) for m in metrics], w, h)
    missing = [i for i, r in enumerate(rects) if r is None]
    if missing:  # crowded: those faces get just their id, placed around the tags already there
        for i in missing:
            texts[i] = shorts[i]
            metrics[i] = measure(shorts[i])
        taken = [r for r in rects if r is not None]
        again = place_tags(np.asarray(faces.xyxy)[missing], [metrics[i][:2] for i in missing], w, h, occupied=taken)
        for i, r in zip(missing, again):
            rects[i] = r
        if any(r is None for r in rects):
            log.debug("%d of %d tags did not fit in the frame", sum(r is None for r in rects), len(rects))
    for (x1, y1, x2, y2), color in zip(faces.xyxy, colors):
        cv2.rectangle(image, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), color, thickness,
                      cv2.LINE_AA)
    for box, rect, text, color, (_, _, base) in zip(faces.xyxy, rects, texts, colors, metrics):
        if rect is None:
            continue
        tx1, ty1, tx2, ty2 = rect
        bx1, by1, bx2, by2 = (int(round(v)) for v in box)
        near = tx1 <= bx2 + 2 and tx2 >= bx1 - 2 and ty1 <= by2 + 3 and ty2 >= by1 - 3
        if not near:  # leader line from the tag to the top centre of its face
            cx = (bx1 + bx2) // 2
            anchor = (cx, by1) if ty2 <= by1 else (cx, by2)
            tag_pt = (min(max(cx, tx1), tx2), ty2 if ty2 <= by1 else ty1)
            cv2.line(image, tag_pt, anchor, color, 1, cv2.LINE_AA)
        cv2.rectangle(image, (tx1, ty1), (tx2 - 1, ty2 - 1), color, cv2.FILLED)
        r, g, b = color[2], color[1], color[0]
        text_color = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
        cv2.putText(image, text, (tx1 + 2, ty2 - base - 1), font, font_scale, text_color, thickness, cv2.LINE_AA)
    return image
