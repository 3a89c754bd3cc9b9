"""Capture: videos built from the group photo, bad inputs, folders/images, fake cameras, thread shutdown."""
from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtfer import capture
from rtfer.capture import open_source
from media_helpers import write_rotated_clip, write_test_video
from rtfer.errors import InputError

N = 24


def _crops(photo: np.ndarray, n: int = N) -> list[np.ndarray]:
    """Moving 160x120 crops of the group photo (a slow pan)."""
    return [np.ascontiguousarray(photo[200 + 3 * i:320 + 3 * i, 300 + 8 * i:460 + 8 * i]) for i in range(n)]


@pytest.fixture(scope="module")
def crops(group_photo) -> list[np.ndarray]:
    return _crops(group_photo)


@pytest.fixture(scope="module")
def video(tmp_path_factory, crops) -> Path:
    return write_test_video(tmp_path_factory.mktemp("cap") / "pan.mp4", crops, fps=25)


def _capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rtfer-capture") and t.is_alive()]


def test_video_frames_times_and_metadata(video, crops):
    with open_source(video) as src:
        assert (src.kind, src.name, src.width, src.height) == ("video", "pan.mp4", 160, 120)
        assert src.fps == pytest.approx(25.0)
        assert src.frame_count == N
        assert src.duration_s == pytest.approx(N / 25, abs=0.05)
        frames = list(src)
    assert [f.index for f in frames] == list(range(N))
    times = np.array([f.time_s for f in frames])
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(np.diff(times), 1 / 25, atol=1e-3)
    assert all(f.source == "pan.mp4" and f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
               for f in frames)
    # BGR order and content survive the codec: each decoded frame is closest to its own crop
    err = np.abs(frames[5].image.astype(float) - crops[5].astype(float)).mean()
    err_rgb = np.abs(frames[5].image[..., ::-1].astype(float) - crops[5].astype(float)).mean()
    assert err < 12 and err < err_rgb
    assert src.warnings == [] and src.dropped == 0


def test_h264_video(tmp_path, crops):
    path = write_test_video(tmp_path / "h.mp4", crops[:10], fps=30, codec="libx264")
    with open_source(str(path)) as src:
        frames = list(src)
    assert len(frames) == 10
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(10) / 30, atol=1e-3)


def test_variable_frame_rate_uses_container_timestamps(tmp_path, crops):
    times = [0.0, 0.1, 0.14, 0.5, 0.52, 1.0, 1.7]
    path = write_test_video(tmp_path / "vfr.mp4", crops[:7], fps=10, times=times)
    with open_source(path) as src:
        got = [f.time_s for f in src]
    np.testing.assert_allclose(got, times, atol=2e-3)


def test_seek(video):
    with open_source(video) as src:
        first = next(src)
        src.seek(0.4)
        rest = list(src)
    assert first.time_s == 0.0
    assert rest[0].time_s == pytest.approx(0.4, abs=1e-3)
    assert rest[0].index == 10
    assert len(rest) == N - 10
    with open_source(video) as src:  # seeking after the end restarts decoding too
        assert len(list(src)) == N
        src.seek(0.8)
        assert [round(f.time_s, 3) for f in src][:2] == [0.8, 0.84]


def test_fixture_videos_decode_with_container_times(fixture_videos):
    for path in sorted(fixture_videos.glob("*.mp4"))[:2] + sorted(fixture_videos.glob("*classroom*.mp4")):
        with open_source(path) as src:
            times = [f.time_s for f in src]
            assert len(times) == src.frame_count and not src.warnings
        d = np.diff(times)
        assert np.all(d > 0) and d.mean() == pytest.approx(1 / src.fps, rel=1e-3)


@pytest.mark.parametrize("case", ["missing", "zero", "random", "text", "empty_dir", "dir_without_images"])
def test_bad_inputs_raise_one_line_input_error(tmp_path, case):
    path = tmp_path / "x.mp4"
    if case == "zero":
        path.touch()
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif case == "text":
        path = tmp_path / "notes.txt"
        path.write_text("this is not a video\n" * 200)
    elif case == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "dir_without_images":
        path = tmp_path / "docs"
        path.mkdir()
        (path / "a.txt").write_text("x")
    with pytest.raises(InputError) as info:
        open_source(path)
    assert "\n" not in str(info.value) and str(path.name) in str(info.value)


def test_truncated_video_yields_frames_then_warns(tmp_path, video, caplog):
    data = video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with caplog.at_level("WARNING", logger="rtfer.capture"):
        with open_source(cut) as src:
            frames = list(src)
            assert 0 < len(frames) < N
            assert len(src.warnings) == 1 and "truncated" in src.warnings[0]
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
    assert np.all(np.diff([f.time_s for f in frames]) > 0)


def test_image_source(tmp_path, crops):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), crops[0])
    with open_source(path) as src:
        frames = list(src)
    assert (src.kind, src.name, src.frame_count, src.width, src.height) == ("image", "face.png", 1, 160, 120)
    assert len(frames) == 1 and frames[0].index == 0 and frames[0].source == "face.png"
    np.testing.assert_array_equal(frames[0].image, crops[0])


def test_folder_source_names_order_and_skips(tmp_path, crops):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (10, 2, 1):
        cv2.imwrite(str(folder / f"img{i}.jpg"), crops[i])
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "readme.txt").write_text("ignored")
    with open_source(folder) as src:
        frames = list(src)
        assert src.kind == "folder" and src.frame_count == 4
    assert [f.source for f in frames] == ["img1.jpg", "img2.jpg", "img10.jpg"]
    assert all(f.index == 0 and f.time_s == 0.0 for f in frames)
    assert any("broken.png" in w for w in src.warnings)


def test_drop_frames_keeps_newest_and_counts(video):
    with open_source(video, drop_frames=True) as src:
        got = []
        for frame in src:
            got.append(frame.index)
            time.sleep(0.02)  # a slow consumer
        dropped = src.dropped
    assert dropped > 0
    assert len(got) + dropped == N
    assert got == sorted(got) and got[-1] == N - 1  # newest frame wins, the last frame is delivered


def test_threads_stop_when_consumer_stops_early(video):
    before = len(_capture_threads())
    with open_source(video, prefetch=2) as src:
        next(src)
        time.sleep(0.05)  # the reader is now blocked on a full queue
        assert len(_capture_threads()) == before + 1
    assert len(_capture_threads()) == before
    assert list(src) == []  # closed

    # a consumer that drops the source without closing it
    src = open_source(video, prefetch=2)
    next(src)
    del src
    gc.collect()
    deadline = time.monotonic() + 3
    while len(_capture_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_capture_threads()) == before


class _FakeCapture:
    """Stands in for cv2.VideoCapture: ``good`` frames, then reads fail forever."""

    def __init__(self, index, good=5, opened=True):
        self.index, self.good, self.opened, self.reads, self.released = index, good, opened, 0, False

    def isOpened(self):  # noqa: N802 - cv2's name
        return self.opened

    def read(self):
        self.reads += 1
        if self.reads <= self.good:
            return True, np.full((48, 64, 3), self.reads, np.uint8)
        time.sleep(0.002)
        return False, None

    def get(self, prop):
        return 30.0

    def release(self):
        self.released = True


def test_camera_frames_then_stop_error(monkeypatch):
    made = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda i: made.append(_FakeCapture(i)) or made[-1])
    monkeypatch.setattr(capture.camera, "CAMERA_STALL_S", 0.1)  # patched where CameraSource reads it
    src = open_source("0")
    assert (src.kind, src.fps, src.frame_count, src.width) == ("camera", 30.0, None, 64)
    got = []
    with pytest.raises(InputError, match="camera 0 stopped delivering frames"):
        for frame in src:
            got.append(frame)
    src.close()
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert np.all(np.diff([f.time_s for f in got]) >= 0)
    assert made[0].index == 0 and made[0].released


def test_camera_that_cannot_open(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda i: _FakeCapture(i, opened=False))
    with pytest.raises(InputError, match="camera 3 cannot be opened"):
        open_source(3)


def test_unreachable_stream_is_input_error():
    t0 = time.monotonic()
    with pytest.raises(InputError, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:1/live")
    assert time.monotonic() - t0 < 15


def test_write_test_video_rejects_size_change(tmp_path, crops):
    with pytest.raises(ValueError, match="frame 1"):
        write_test_video(tmp_path / "bad.mp4", [crops[0], crops[0][:60]], fps=10)
    assert os.path.exists(tmp_path / "bad.mp4")


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_phone_rotation_is_applied_as_players_do(tmp_path, degrees):
    """A clip stored sideways with a display rotation decodes upright, exactly as FFmpeg's player shows it."""
    import subprocess

    import imageio_ffmpeg

    from rtfer.capture import open_source

    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:12, :20] = 255  # a mark in the stored top-left corner
    path = tmp_path / "phone.mp4"
    write_rotated_clip(path, stored, degrees)
    with open_source(path) as src:
        image = next(src).image
        assert (src.width, src.height) == (image.shape[1], image.shape[0])
    shown = image.shape[:2] if degrees != 180 else (48, 64)
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(shown)
    assert image.shape[:2] == reference.shape == ((64, 48) if degrees in (90, -90) else (48, 64))
    ours = image.mean(axis=2)
    assert np.abs(ours - reference).mean() < 8  # same orientation (a wrong turn moves the mark: mean diff > 30)


def test_capture_modules_import_one_way():
    """The source kinds build on rtfer.capture.base only; open_source's module picks among them. No cycle, no
    private names across modules."""
    from package_helpers import assert_layered

    graph = assert_layered("rtfer.capture")
    assert graph["rtfer.capture.base"] == set()
    for kind in ("camera", "images", "video"):
        assert graph[f"rtfer.capture.{kind}"] == {"rtfer.capture.base"}
    assert graph["rtfer.capture.opener"] == {f"rtfer.capture.{m}" for m in ("base", "camera", "images", "video")}
