"""Image folders get their own view (one entry per image; the picture, the bars, the caption and the position all
name the same image), face identity never uses an emotion or valence colour, and the read-out under the timeline
lists only faces that are on screen at that time."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtfer.colors import (CVD_MATRICES, EMOTION_COLORS_HEX, IDENTITY_TONES_HEX, LEVEL_COLORS_HEX, delta_e2000,
                          hex_to_rgb, identity_style, rgb_to_lab, simulate_cvd, valence_hex)
from rtfer.types import EmotionScores, Faces, FrameResult
from rtfer.ui.timeline_model import TimelineBuffer

pytest.importorskip("pytestqt")

HAPPY = np.array([0.05, 0.0, 0.0, 0.8, 0.05, 0.0, 0.1], np.float32)
ANGRY = np.array([0.0, 0.1, 0.2, 0.0, 0.1, 0.5, 0.1], np.float32)


def result(index, time_s, probs, ids, source="t"):
    n = len(probs)
    xyxy = np.array([[10 + 50 * i, 10, 50 + 50 * i, 60] for i in range(n)], np.float32).reshape(n, 4)
    faces = Faces(xyxy, np.zeros((n, 5, 2), np.float32), np.full(n, 0.9, np.float32), np.asarray(ids))
    probs = np.asarray(probs, np.float32).reshape(n, 7)
    return FrameResult(index, time_s, source, faces, EmotionScores(probs), EmotionScores(probs), {}, width=200,
                       height=100)


def test_identity_tones_never_look_like_an_emotion_or_valence_colour():
    meaning = [*EMOTION_COLORS_HEX.values(), *LEVEL_COLORS_HEX.values(), *(valence_hex(v) for v in
                                                                           np.linspace(-1, 1, 41))]
    for vision in (None, *CVD_MATRICES):
        def lab(h):
            rgb = np.array(hex_to_rgb(h), np.float64) / 255
            return rgb_to_lab(simulate_cvd(rgb, vision) if vision else rgb)

        worst = min(delta_e2000(lab(t), lab(c)) for t in IDENTITY_TONES_HEX for c in meaning)
        assert worst >= (20 if vision is None else 15), (vision, worst)  # ~10 is already an obvious difference
    styles = {identity_style(i)[:2] for i in range(10)}
    assert len(styles) == 10  # ten faces, ten different lines
    from rtfer.ui.widgets import track_color

    assert {track_color(i) for i in range(40)} <= set(IDENTITY_TONES_HEX)


def test_summary_png_face_lines_use_identity_tones(tmp_path):
    from matplotlib.figure import Figure

    from rtfer.sinks import SummaryAccumulator
    from rtfer.sinks.plot import video_figure

    acc = SummaryAccumulator()
    for k in range(40):
        acc.add(k / 10, np.array([0, 1, 2]), np.stack([ANGRY, HAPPY, ANGRY]))
    faces = acc.summary().by_screen_time()
    fig = video_figure(acc, faces, Figure, 4.0)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("face")]
    assert len(lines) == 3
    from matplotlib.colors import to_hex

    assert {to_hex(ln.get_color()).upper() for ln in lines} <= set(IDENTITY_TONES_HEX)


def test_hover_lists_only_faces_on_screen(qtbot):
    from rtfer.ui.widgets import TimelineWidget

    buf = TimelineBuffer()
    widget = TimelineWidget(buf, interval_ms=10_000)
    qtbot.addWidget(widget)
    for i in range(30):  # 30 fps; face 9 leaves after 0.6 s, face 2 stays
        ids = [2, 9] if i < 18 else [2]
        buf.append(result(i, i / 30, np.stack([ANGRY, HAPPY][: len(ids)]), ids))
    widget.refresh()
    text = widget.hover_at(buf.last_time)  # what the headless screenshot shows
    assert "#2</span>" in text and "#9" not in text and "#9" not in widget.legend_label.text()
    assert "#9</span>" in widget.hover_at(0.5)  # while it was on screen it is listed


def test_image_mode_one_entry_per_image(qtbot):
    from rtfer.ui.widgets import TimelineWidget

    buf = TimelineBuffer()
    buf.set_mode("images")
    widget = TimelineWidget(buf, interval_ms=10_000)
    qtbot.addWidget(widget)
    buf.append(result(0, 0.0, np.stack([HAPPY, ANGRY]), [0, 1], "a.jpg"))
    buf.append(result(0, 0.0, ANGRY[None], [0], "b.jpg"))
    buf.append(result(0, 0.0, np.zeros((0, 7)), [], "c.jpg"))
    widget.refresh()
    assert [e.index for e in buf.images()] == [1, 2, 3] and buf.snapshot() == []  # no tracks: nothing mixes
    x, y = widget._image_valence.getData()
    assert len(x) == 3 and sorted(np.round(x).tolist()) == [1, 1, 2]
    assert y.tolist() == pytest.approx([0.8, -0.9, -0.9], abs=1e-6)
    assert widget._valence_curves == {} and "c.jpg" in widget.legend_label.text()
    text = widget.hover_at(1.0)
    assert text.startswith("image 1 (a.jpg)") and "face 0</b> +0.80 happiness" in text and "face 1" in text
    assert widget.hover_at(2.1).startswith("image 2 (b.jpg)") and "no face" in widget.hover_at(3)
    buf.clear()
    buf.set_mode("time")
    buf.append(result(0, 0.0, HAPPY[None], [4]))
    buf.append(result(1, 0.1, HAPPY[None], [4]))
    widget.refresh()
    assert set(widget._valence_curves) == {4} and len(widget._image_valence.getData()[0]) == 0


def test_window_on_an_image_folder(qtbot, qsettings, fake_factory, tmp_path, group_photo):
    from rtfer.ui.main_window import MainWindow

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        cv2.imwrite(str(folder / name), np.roll(group_photo, 40 * k, axis=1))
    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    win.settings.realtime = False
    qtbot.addWidget(win)
    win.show()
    try:
        win.open_source(str(folder))
        qtbot.waitUntil(lambda: win.controller.state == "idle" and not win.controller.running, timeout=10000)
        qtbot.wait(50)
        assert win.controller.timeline.mode == "images"
        assert [e.name for e in win.controller.timeline.images()] == ["a.jpg", "b.jpg", "c.jpg"]
        assert win.position_label.text() == "image 3" and win.panel.caption.text() == "Image 3: c.jpg"
        win.timeline.refresh()
        assert "c.jpg" in win.timeline.legend_label.text() and win.timeline._valence_curves == {}
        assert len(win.timeline._image_valence.getData()[0]) == 6  # two faces per image, one point each
    finally:
        win.controller.stop()
