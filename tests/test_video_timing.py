"""Frame times from containers that do not store presentation timestamps (issue 23): H.264 with B-frames in AVI
(the demuxer numbers packets in decode order), and headers whose frame count or rate cannot be trusted."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from cli_helpers import bundle_args, run_cli
from media_helpers import write_test_video


def _marked(i: int) -> np.ndarray:
    """A 64x48 frame whose top row of 8x8 blocks spells ``i`` in binary (and a bar that moves below it, so the
    encoder uses B-frames)."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[16:, (i * 5) % 60:(i * 5) % 60 + 4] = 255
    for bit in range(8):
        if i >> bit & 1:
            img[:8, bit * 8:bit * 8 + 8] = 255
    return img


def _mark(image: np.ndarray) -> int:
    return sum(1 << bit for bit in range(8) if image[2:6, bit * 8 + 2:bit * 8 + 6].mean() > 128)


def write_bframes_avi(path, n: int = 40, fps: int = 25, frames=None):
    """H.264 with B-frames muxed into AVI, as ``ffmpeg -i clip.mp4 -c copy clip.avi`` makes it."""
    images = list(frames) if frames is not None else [_marked(i) for i in range(n)]
    return write_test_video(path, images, fps, codec="libx264",
                            codec_options={"x264-params": "bframes=3:b-adapt=0:keyint=20"})


def _container_pts(path) -> list[int]:
    import av

    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(c.streams.video[0])]


def test_bframes_in_avi_come_out_in_presentation_order_with_increasing_times(tmp_path):
    from rtfer.capture import open_source

    path = write_bframes_avi(tmp_path / "b.avi")
    pts = _container_pts(path)
    assert any(b < a for a, b in zip(pts, pts[1:])), "the fixture must have decode-order timestamps"
    with open_source(path) as src:
        frames = list(src)
        assert src.warnings == []
        assert src.fps == pytest.approx(25.0) and src.frame_count == 40
    marks = [_mark(f.image) for f in frames]
    assert marks == list(range(40))  # every frame, in presentation order
    times = np.array([f.time_s for f in frames])
    assert np.all(np.diff(times) > 0)
    assert np.allclose(np.diff(times), 1 / 25)  # the times are the presentation times, not just clamped


def test_bframes_avi_of_real_faces_runs_end_to_end_and_time_never_goes_backwards(tmp_path, capsys, tiny_bundle,
                                                                                    group_photo):
    """The reproducer: `internal error: KeyError: 0` (held classifications lost when time went backwards) and
    time_s going backwards with --smoothing none."""
    from media_helpers import pan_frames

    path = write_bframes_avi(tmp_path / "b.avi", frames=pan_frames(group_photo, 24, out_width=320), fps=10)
    for smoothing in ("hmm", "none"):
        out = tmp_path / f"b-{smoothing}.csv"
        code, _, err = run_cli(["analyze", str(path), "-o", str(out), "-q", "--smoothing", smoothing,
                                "--classify-rate", "3", *bundle_args(tiny_bundle)], capsys)
        assert code == 0, err
        rows = list(csv.DictReader(out.open()))
        frames = [int(r["frame"]) for r in rows]
        assert sorted(set(frames)) == list(range(24)) and frames == sorted(frames)
        assert sum(1 for r in rows if r["face_id"]) > 24  # faces found and tracked
        times = [float(r["time_s"]) for r in rows]
        assert all(b >= a for a, b in zip(times, times[1:]))
        per_frame = sorted({(f, t) for f, t in zip(frames, times)})
        got = np.array([t for _, t in per_frame])
        assert np.allclose(np.diff(got), 0.1) and 0 <= got[0] <= 0.1 + 1e-9  # AVI's first pts is one frame in


def _write_bframes_mp4(path) -> None:
    """20 marked frames at 25 fps, H.264 with 3 B-frames (decode order differs from presentation order)."""
    write_test_video(path, [_marked(i) for i in range(20)], 25, codec="libx264",
                     codec_options={"x264-params": "bframes=3:b-adapt=0"})


def test_mp4_times_are_untouched(tmp_path):
    """A container with real presentation times (MP4 with B-frames) keeps them exactly."""
    import av

    from rtfer.capture import open_source

    path = tmp_path / "b.mp4"
    _write_bframes_mp4(path)
    with av.open(str(path)) as c:
        expected = [float(f.time) for f in c.decode(c.streams.video[0])]
    with open_source(path) as src:
        got = [f.time_s for f in src]
    assert got == pytest.approx([t - expected[0] for t in expected], abs=1e-9)


def test_presentation_times_keep_container_times_when_a_packet_is_dropped():
    """A decoder that drops a packet (a stream cut mid-GOP) leaves a stale pts in the heap: the container's own,
    increasing times win after the hold, and nothing goes backwards."""
    from fractions import Fraction
    from types import SimpleNamespace as NS

    from rtfer.capture.video import PresentationTimes

    times = PresentationTimes(Fraction(1, 10), 0.0, 10.0)
    out = []
    for pts in range(40):
        times.packet(NS(pts=pts, size=100))
        if pts < 2:
            continue  # the first two packets never become frames
        out += times.frame(NS(pts=pts))
    out += times.flush()
    assert [t for _, t in out] == pytest.approx([p / 10 for p in range(2, 40)])
    assert times.mode == "container" and times.clamped == 0


def test_avi_made_by_ffmpeg_copy_has_its_real_rate_count_and_no_truncation_warning(tmp_path):
    """`ffmpeg -i clip.mp4 -c copy clip.avi` writes the time base (12800/s) as the AVI's rate and counts frames in
    its ticks: before, this read as "only 20 of 10240 frames decoded; the file may be truncated" at 12800 fps."""
    import subprocess

    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    import av

    from rtfer.capture import open_source

    mp4 = tmp_path / "b.mp4"
    _write_bframes_mp4(mp4)
    avi = tmp_path / "b.avi"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(mp4), "-c", "copy", str(avi)],
                   check=True, timeout=60)
    with av.open(str(avi)) as c:
        header_rate = float(c.streams.video[0].average_rate)
    with open_source(avi) as src:
        frames = list(src)
        assert src.warnings == [], (src.fps, src.frame_count, src.duration_s)
        assert src.fps == pytest.approx(25.0) and src.frame_count == 20
    assert [_mark(f.image) for f in frames] == list(range(20))
    steps = np.diff([f.time_s for f in frames])
    assert np.all(steps > 0) and np.allclose(steps[:-1], 1 / 25)  # AVI's demuxer times the last packet 1 tick on
    assert header_rate > 50  # the container's own header really is misleading
