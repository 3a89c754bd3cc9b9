"""Widgets update from FrameResults: video view, probability bars with the scale switch, timeline and hover."""
from __future__ import annotations

import numpy as np
import pytest

from rtfer.types import EmotionScores, Faces, FrameResult
from rtfer.ui.timeline_model import TimelineBuffer

pytest.importorskip("pytestqt")


def make_result(index: int, probs: np.ndarray, ids=None, image=None) -> FrameResult:
    n = len(probs)
    xyxy = np.array([[10 + 50 * i, 10, 50 + 50 * i, 60] for i in range(n)], np.float32).reshape(n, 4)
    faces = Faces(xyxy, np.zeros((n, 5, 2), np.float32), np.full(n, 0.9, np.float32),
                  np.arange(1, n + 1) if ids is None else ids)
    return FrameResult(index, index / 10, "t", faces, EmotionScores(probs), EmotionScores(probs),
                       {"detect": 3.0}, image=image, width=200, height=100)


HAPPY = np.array([0.05, 0.0, 0.0, 0.8, 0.05, 0.0, 0.1], np.float32)
ANGRY = np.array([0.0, 0.1, 0.2, 0.0, 0.1, 0.5, 0.1], np.float32)


def test_video_view_shows_frames(qtbot):
    from rtfer.ui.widgets import VideoView

    view = VideoView()
    qtbot.addWidget(view)
    view.resize(400, 300)
    assert not view.has_image and "No source" in view.text()
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    view.set_image(image)
    assert view.has_image and view.frames_shown == 1
    pix = view.pixmap()
    assert pix.width() == 400 and pix.height() == 200  # aspect ratio kept
    assert pix.toImage().pixelColor(200, 100).red() == 255 and pix.toImage().pixelColor(200, 100).blue() == 0


def test_probability_panel_scales_and_reuse(qtbot):
    from rtfer.ui.widgets import ProbabilityPanel

    panel = ProbabilityPanel()
    qtbot.addWidget(panel)
    panel.set_result(make_result(0, np.stack([ANGRY, HAPPY]), ids=np.array([7, 3])))
    bars = panel.bars
    assert [b.track_id for b in bars] == [3, 7]  # ordered by track id
    assert bars[0].top_label == "happiness" and bars[1].top_label == "anger"
    assert len(bars[0].names) == 7
    panel.set_scale("sentiment5")
    assert panel.bars[0].top_label == "very_positive" and panel.bars[1].top_label == "very_negative"
    assert panel.bars[1].values == pytest.approx([0.7, 0.2, 0.1, 0.0, 0.0], abs=1e-6)
    panel.set_scale("sentiment3")
    assert panel.bars[0].names == ("negative", "neutral", "positive")
    assert panel.bars[0].values == pytest.approx([0.05, 0.1, 0.85], abs=1e-6)
    panel.set_result(make_result(1, HAPPY[None]))
    assert len(panel.bars) == 1 and len(panel._bars) == 2  # widgets are reused, extras hidden
    panel.set_result(make_result(2, np.zeros((0, 7), np.float32)))
    assert panel.bars == [] and not panel._empty.isHidden()
    panel.show()
    panel.set_result(make_result(3, np.stack([HAPPY, ANGRY])))
    panel.grab()  # paints every bar without error


def test_timeline_buffer_ring_and_tracks():
    buf = TimelineBuffer(capacity=5, max_tracks=2)
    for i in range(8):
        buf.append(make_result(i, np.stack([HAPPY, ANGRY])))
    buf.append(make_result(8, np.stack([HAPPY, ANGRY, HAPPY]), ids=np.array([1, 2, 9])))
    series = buf.snapshot()
    assert [s.track_id for s in series] == [2, 9]  # oldest track dropped beyond max_tracks
    assert len(series[0].times) == 5 and series[0].times[-1] == pytest.approx(0.8)
    assert series[0].valence[-1] == pytest.approx(-0.9, abs=1e-6)  # anger row: P(pos) 0 - P(neg) 0.9
    assert [s.track_id for s in buf.snapshot(since_s=0.75)] == [2, 9]
    assert buf.last_keys == (1, 2, 9)
    vals = TimelineBuffer.values_at(series, 0.62, tolerance_s=0.05)
    assert [v[0] for v in vals] == [2] and vals[0][1] == pytest.approx(0.6)


def test_timeline_redraws_on_timer_and_hover(qtbot):
    from rtfer.ui.widgets import TimelineWidget

    buf = TimelineBuffer()
    widget = TimelineWidget(buf, interval_ms=50)
    qtbot.addWidget(widget)
    widget.resize(600, 300)
    widget.show()
    for i in range(20):
        buf.append(make_result(i, np.stack([HAPPY, ANGRY])))
    assert widget._valence_curves == {}  # nothing drawn per frame
    qtbot.waitUntil(lambda: len(widget._valence_curves) == 2, timeout=2000)
    x, y = widget._valence_curves[1].getData()
    assert len(x) == 20 and y[0] == pytest.approx(0.85 - 0.05, abs=1e-6)
    _x, dom = widget._dominant_curves[2].getData()
    assert np.round(dom[0]) == 5  # anger is class index 5
    text = widget.hover_at(1.0)
    assert "#1</span> +0.80 happiness 80%" in text
    assert "#2" in text and "anger 50%" in text
    widget.set_scale("sentiment3")
    _x, dom = widget._dominant_curves[1].getData()
    assert np.round(dom[0]) == 2  # positive
    assert "positive 85%" in widget.hover_at(0.5)
    redraws = widget.redraws
    qtbot.wait(150)
    assert widget.redraws == redraws  # no new data, no redraw
    widget.clear()
    assert widget._valence_curves == {}


def test_timeline_legend_lists_the_faces_on_screen(qtbot):
    from rtfer.ui.widgets import TimelineWidget

    buf = TimelineBuffer()
    widget = TimelineWidget(buf, interval_ms=10_000)
    qtbot.addWidget(widget)
    for i in range(30):  # track 1 leaves after 0.5 s, track 2 stays until 3 s
        probs = np.stack([HAPPY, ANGRY]) if i < 5 else ANGRY[None]
        buf.append(make_result(i, probs, ids=np.array([1, 2]) if i < 5 else np.array([2])))
    widget.refresh()
    assert set(widget._valence_curves) == {1, 2} and widget._legend_ids == [2]
    assert "#2</span>" in widget.legend_label.text() and "#1</span>" not in widget.legend_label.text()


def test_timeline_hover_follows_the_mouse(qtbot):
    from PyQt6.QtCore import QPointF

    from rtfer.ui.widgets import TimelineWidget

    buf = TimelineBuffer()
    widget = TimelineWidget(buf, interval_ms=10_000)
    qtbot.addWidget(widget)
    widget.resize(600, 300)
    widget.show()
    for i in range(20):
        buf.append(make_result(i, np.stack([HAPPY, ANGRY])))
    widget.refresh()
    qtbot.wait(50)
    pos = widget.valence_plot.vb.mapViewToScene(QPointF(1.2, 0.0))
    widget.graphics.scene().sigMouseMoved.emit(pos)
    qtbot.waitUntil(lambda: widget.hover_label.text().startswith("t = 1.2 s"), timeout=2000)
    assert "#2</span> -0.90 anger 50%" in widget.hover_label.text()
    assert widget._cursor[0].isVisible() and widget._cursor[0].value() == pytest.approx(1.2, abs=0.05)
