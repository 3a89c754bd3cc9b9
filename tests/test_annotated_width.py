"""The annotated video's size: the source's width capped at 1920 by default, ``--annotated-width`` otherwise (never
upscaled), labels drawn at the output size, and the fast bounded-memory x264 preset."""
from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import run_cli
from rtfer.sinks import AnnotatedVideoSink
from rtfer.sinks import video as video_sink
from rtfer.types import EmotionScores, Faces, FrameResult


def _frame(index: int, w: int, h: int) -> FrameResult:
    image = np.full((h, w, 3), 90, np.uint8)
    image[:, : w // 2] = 200
    xyxy = np.array([[w * 0.1, h * 0.2, w * 0.4, h * 0.8]], np.float32)
    lm = np.repeat(((xyxy[:, None, :2] + xyxy[:, None, 2:]) / 2), 5, axis=1)
    probs = np.array([[0.05, 0.05, 0.05, 0.7, 0.05, 0.05, 0.05]], np.float32)
    return FrameResult(index, index / 10, "clip.mp4", Faces(xyxy, lm, np.array([0.9]), np.array([3])),
                       EmotionScores(probs), EmotionScores(probs), image=image, width=w, height=h)


def _size(path) -> tuple[int, int, int]:
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return frames[0].shape[1], frames[0].shape[0], len(frames)


@pytest.mark.parametrize("src, width, expected", [((2400, 200), None, (1920, 160)),  # default cap
                                                  ((640, 360), None, (640, 360)),  # small sources unchanged
                                                  ((640, 360), 320, (320, 180)),
                                                  ((640, 360), 1280, (640, 360)),  # never upscaled
                                                  ((641, 361), None, (640, 360))])  # even sizes for yuv420p
def test_output_size(tmp_path, src, width, expected):
    sink = AnnotatedVideoSink(tmp_path / "a.mp4", 10, width=width)
    assert sink.output_size(*src) == expected


def test_downscaled_video_has_its_labels_at_the_output_size(tmp_path, monkeypatch):
    import rtfer.annotate

    drawn = []
    real = rtfer.annotate.annotate

    def spy(image, result, *args, **kwargs):
        drawn.append((image.shape[:2], result.faces.xyxy.copy()))
        return real(image, result, *args, **kwargs)

    monkeypatch.setattr(rtfer.annotate, "annotate", spy)
    path = tmp_path / "a.mp4"
    with AnnotatedVideoSink(path, 10, width=320) as sink:
        for k in range(3):
            sink.append(_frame(k, 640, 360))
    assert _size(path) == (320, 180, 3)
    # labels are drawn on the 320 px frame with the boxes scaled to it (not drawn at 640 px and shrunk, which
    # would make them half as big and blurred)
    assert all(shape == (180, 320) for shape, _ in drawn) and len(drawn) == 3
    np.testing.assert_allclose(drawn[0][1], [[32, 36, 128, 144]], atol=0.01)


def test_encoder_preset_is_fast_and_without_lookahead():
    assert video_sink.X264_OPTIONS["preset"] in ("superfast", "ultrafast")
    assert video_sink.DEFAULT_MAX_WIDTH == 1920


def test_cli_rejects_a_tiny_width(tmp_path, capsys):
    code, _, err = run_cli(["analyze", str(tmp_path / "x.mp4"), "--annotated", str(tmp_path / "a.mp4"),
                            "--annotated-width", "8"], capsys)
    assert code == 2 and err.strip() == "rtfer: error: --annotated-width must be >= 16 pixels, got 8"
