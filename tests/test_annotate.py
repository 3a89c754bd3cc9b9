"""Label tags on the annotated video: inside the frame, never over one another; one colour map for every output."""
from __future__ import annotations

import numpy as np
import pytest

from rtfer.annotate import EMOTION_COLORS_BGR, annotate, place_tags
from rtfer.colors import (CVD_MATRICES, EMOTION_COLORS_HEX, LEVEL_COLORS_HEX, color_rgb01, hue_degrees, min_delta_e,
                          valence_hex)
from rtfer.labels import CLASSES
from rtfer.types import EmotionScores, Faces, FrameResult

#: Stated floors (CIEDE2000): the class colours are told apart with normal vision and with each simulated deficiency.
MIN_DELTA_E = 20.0
MIN_DELTA_E_CVD = 10.0


def _crowd(n_rows: int = 4, n_cols: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    boxes = []
    for r in range(n_rows):
        for c in range(n_cols):
            x, y, s = 20 + c * 76 + rng.integers(-5, 5), 30 + r * 85 + rng.integers(-5, 5), 40 + rng.integers(-5, 10)
            boxes.append([x, y, x + s, y + s])
    return np.array(boxes, np.float32)


def _rects_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_layout(rects, w, h):
    placed = [r for r in rects if r is not None]
    for r in placed:
        assert 0 <= r[0] < r[2] <= w and 0 <= r[1] < r[3] <= h, r
    for i in range(len(placed)):
        for j in range(i + 1, len(placed)):
            assert not _rects_overlap(placed[i], placed[j]), (placed[i], placed[j])


def test_place_tags_crowded_frame_no_overlap_inside_frame():
    boxes = _crowd()
    # boxes at the frame's edges too: the tag above a face at the top must move down, at the right edge move left
    boxes = np.concatenate([boxes, [[0, 0, 30, 30], [610, 330, 640, 360], [600, 0, 640, 40]]]).astype(np.float32)
    sizes = [(150, 16)] * len(boxes)
    rects = place_tags(boxes, sizes, 640, 360)
    assert all(r is not None for r in rects)
    _check_layout(rects, 640, 360)


def test_place_tags_full_frame_gives_none_not_overlap():
    boxes = np.array([[10 * i, 10, 10 * i + 8, 18] for i in range(20)], np.float32)
    rects = place_tags(boxes, [(100, 40)] * 20, 200, 100)
    assert any(r is None for r in rects)
    _check_layout(rects, 200, 100)
    assert place_tags(boxes[:1], [(300, 10)], 200, 100) == [None]  # wider than the frame


def test_annotate_crowded_frame_draws_every_box():
    boxes = _crowd()
    n = len(boxes)
    p = np.random.default_rng(1).dirichlet(np.ones(7) * 0.3, size=n).astype(np.float32)
    res = FrameResult(0, 0.0, "x", Faces(boxes, np.zeros((n, 5, 2)), np.ones(n), np.arange(n) + 100),
                      EmotionScores(p), EmotionScores(p))
    out = annotate(np.full((360, 640, 3), 90, np.uint8), res)
    for (x1, y1, x2, y2), k in zip(boxes.astype(int), p.argmax(1)):
        colour = np.array(EMOTION_COLORS_BGR[CLASSES[k]])
        assert np.abs(out[(y1 + y2) // 2, x1].astype(int) - colour).max() < 60  # left edge in the label's colour


def test_colour_map_delta_e_with_and_without_colour_blindness():
    assert set(EMOTION_COLORS_HEX) == set(CLASSES)
    d, pair = min_delta_e()
    assert d >= MIN_DELTA_E, pair
    for vision in CVD_MATRICES:
        d, pair = min_delta_e(vision=vision)
        assert d >= MIN_DELTA_E_CVD, (vision, pair, d)
        assert min_delta_e(LEVEL_COLORS_HEX, vision)[0] >= MIN_DELTA_E_CVD


def test_happiness_and_disgust_differ_in_hue_and_valence_runs_negative_to_positive():
    dh = abs(hue_degrees(EMOTION_COLORS_HEX["happiness"]) - hue_degrees(EMOTION_COLORS_HEX["disgust"]))
    assert min(dh, 360 - dh) > 90
    # the valence scale's ends are the sentiment levels' ends, and disgust/happiness sit on the matching sides
    assert valence_hex(-1) == LEVEL_COLORS_HEX["very_negative"] and valence_hex(1) == LEVEL_COLORS_HEX["very_positive"]
    g = lambda hx: int(hx[3:5], 16) - int(hx[1:3], 16)  # green minus red  # noqa: E731
    assert g(valence_hex(1)) > 0 > g(valence_hex(-1))
    assert g(EMOTION_COLORS_HEX["happiness"]) > 0 > g(EMOTION_COLORS_HEX["disgust"])
    assert color_rgb01("happiness") == pytest.approx((0.0, 158 / 255, 115 / 255))
