"""Outputs people hand on: the HTML report (self-contained, one gallery picture per lasting face), the summary PNG's
layout, the annotated video's audio, and `--report` in the CLI and batch mode. No browser needed."""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import bundle_args as _common
from cli_helpers import run_cli as _cli
from media_helpers import write_rotated_clip
from rtfer.report import ReportSink, top_moments, write_index
from rtfer.sinks import AnnotatedVideoSink, SummaryAccumulator, write_summary_png
from rtfer.types import EmotionScores, Faces, FrameResult

FPS = 10


def _peaked(cls: int, conf: float = 0.8) -> np.ndarray:
    p = np.full(7, (1 - conf) / 6, np.float32)
    p[cls] = conf
    return p


def _face_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A textured frame (the thumbnail's sharpness measure needs some detail)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(img, np.ones((8, 8, 1), np.uint8)))


def _frames(n: int = 30, blip_at: int = 10):
    """Two faces on screen for ``n`` frames (face 1 turns from happiness to anger half-way), one face for 3 frames."""
    image = _face_image()
    for k in range(n):
        boxes = [[20, 40, 80, 100], [160, 40, 220, 100]]
        ids = [1, 2]
        probs = [_peaked(3 if k < n // 2 else 5), _peaked(6)]
        if blip_at <= k < blip_at + 3:
            boxes.append([250, 150, 300, 200])
            ids.append(9)
            probs.append(_peaked(0))
        m = len(boxes)
        lm = np.zeros((m, 5, 2), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            lm[i] = [[x1 + 18, y1 + 25], [x2 - 18, y1 + 25], [(x1 + x2) / 2, y1 + 38], [x1 + 22, y2 - 15],
                     [x2 - 22, y2 - 15]]
        faces = Faces(np.array(boxes, np.float32), lm, np.full(m, 0.9), np.array(ids))
        p = np.stack(probs)
        yield FrameResult(k, k / FPS, "lecture.mp4", faces, EmotionScores(p), EmotionScores(p), image=image,
                          width=320, height=240)


def _clip(**kw) -> dict:
    return {"name": "lecture.mp4", "kind": "video", "duration_s": 3.0, "fps": FPS, "width": 320, "height": 240, **kw}


def _run() -> dict:
    return {"rtfer": "0", "date": "2026-01-01T00:00:00+00:00", "command": "rtfer analyze lecture.mp4 --report r.html",
            "bundle": "tiny 0", "accuracy": 0.823, "mean_class_accuracy": 0.658, "val_count": 3372,
            "detector": "scrfd", "backend": "onnxruntime", "device": "cpu"}


def test_report_is_self_contained_with_one_picture_per_lasting_face(tmp_path):
    path = tmp_path / "r.html"
    with ReportSink(path, clip=_clip(), run=_run()) as sink:
        for result in _frames():
            sink.append(result)
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "lecture.mp4" in html
    # no network reference of any kind: no URL scheme, every src/href is inline data or an in-page anchor
    text = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "DATA", html)
    assert not re.search(r"https?:|ftp:|//", text, re.I)
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("data:", "#")), ref
    assert "@import" not in html and all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))
    rows = re.findall(r'<tr id="face-(\d+)">(.*?)</tr>', html, re.S)
    assert [r[0] for r in rows] == ["1", "2"]  # the 3-frame track is counted, not shown
    for _, row in rows:
        assert len(re.findall(r'<img src="data:image/jpeg;base64,', row)) == 1
        assert "<svg" in row  # its timeline
    assert "1 short track" in html
    assert "82.3%" in html and "scrfd" in html and "rtfer analyze lecture.mp4" in html
    assert html.count("<svg") == 3  # two face timelines and the room
    assert "Top moments" in html and "happiness &rarr; anger" in html


def test_report_for_an_image_folder_has_one_row_per_image_face(tmp_path):
    path = tmp_path / "r.html"
    image = _face_image()
    with ReportSink(path, clip=_clip(name="photos", kind="folder", duration_s=None), run={"rtfer": "0", "date": "d",
                                                                                          "command": "c"}) as sink:
        for k, name in enumerate(["a.jpg", "b.jpg"]):
            faces = Faces(np.array([[20, 40, 80, 100]], np.float32), np.zeros((1, 5, 2)), np.ones(1), np.array([0]))
            p = _peaked(3 if k == 0 else 2)[None]
            sink.append(FrameResult(0, 0.0, name, faces, EmotionScores(p), EmotionScores(p), image=image))
    html = path.read_text(encoding="utf-8")
    labels = re.findall(r'<td class="fid">(.*?)</td>', html)
    assert labels == ["a.jpg face 0", "b.jpg face 0"]


def test_top_moments_find_the_swing():
    acc = SummaryAccumulator()
    for r in _frames(n=40):
        acc.update(r)
    faces = acc.summary().by_screen_time()
    moments = top_moments(acc, faces)
    assert moments and moments[0].face.face_id == 1
    assert moments[0].swing < -1.0 and 1.0 <= moments[0].start_s <= 2.2


def test_summary_png_axis_from_zero_legends_outside_faces_capped(tmp_path):
    from matplotlib.figure import Figure

    from rtfer.sinks import video_figure as _video_figure

    acc = SummaryAccumulator()
    for k in range(40):
        n = 15
        probs = np.stack([_peaked(i % 7) for i in range(n)])
        acc.add(5.0 + k / FPS, np.arange(n), probs, source="clip.mp4")  # the faces appear 5 s in
    faces = acc.summary().by_screen_time()[:12]
    fig = _video_figure(acc, faces, Figure, duration_s=12.0)
    ax_val, ax_dom = fig.axes[0], fig.axes[1]
    assert ax_val.get_xlim() == (0.0, 12.0) and ax_dom.get_xlim() == (0.0, 12.0)
    fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in (ax_val, ax_dom):
        legend = ax.get_legend()
        assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # right of the data
    path = write_summary_png(acc, tmp_path / "s.png", title="clip.mp4 \u2014 bundle default 1", duration_s=12.0)
    assert path.stat().st_size > 10_000
    assert len(acc.summary().faces) == 15


def test_summary_keeps_faces_of_different_images_apart(tmp_path):
    acc = SummaryAccumulator()
    for name, cls in (("a.jpg", 3), ("b.jpg", 2), ("c.jpg", 6)):
        acc.add(0.0, np.array([0]), _peaked(cls)[None], source=name)
    s = acc.summary()
    assert s.per_image and len(s.faces) == 3
    assert sorted(f.label(True) for f in s.faces) == ["a.jpg face 0", "b.jpg face 0", "c.jpg face 0"]
    assert {f.source: f.dominant for f in s.faces} == {"a.jpg": "happiness", "b.jpg": "disgust", "c.jpg": "neutral"}
    assert "b.jpg face 0" in s.table()
    assert write_summary_png(acc, tmp_path / "f.png", title="photos").stat().st_size > 5_000  # one row per image face


def _tone_clip(path: Path, seconds: float = 1.0, codec: str = "aac", rate: int = 44100) -> Path:
    """A video with a 440 Hz tone (PyAV)."""
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        a = c.add_stream(codec, rate=rate)
        a.codec_context.layout = "mono"
        for i in range(int(seconds * FPS)):
            f = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 20 % 255, np.uint8), format="bgr24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, len(tone), 1024):
            chunk = tone[k:k + 1024]
            if codec.startswith("pcm_s16"):
                af = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16)[None], format="s16", layout="mono")
            else:
                af = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = rate, k, Fraction(1, rate)
            for p in a.encode(af):
                c.mux(p)
        for s in (vs, a):
            for p in s.encode():
                c.mux(p)
    return path


@pytest.mark.parametrize("codec, suffix, mode", [("aac", ".mp4", "copy"), ("pcm_s16le", ".mov", "encode")])
def test_annotated_video_keeps_the_audio(tmp_path, codec, suffix, mode):
    import av

    from rtfer.capture import open_source

    src = _tone_clip(tmp_path / f"tone{suffix}", codec=codec)
    out = tmp_path / "ann.mp4"
    empty = Faces(np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0), np.zeros(0, int))
    with open_source(src) as s, AnnotatedVideoSink(out, s.fps, audio_from=src) as sink:
        for fr in s:
            sink.append(FrameResult(fr.index, fr.time_s, "t", empty, EmotionScores(np.zeros((0, 7))),
                                    EmotionScores(np.zeros((0, 7))), image=fr.image))
    assert sink.audio_mode == mode
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(a)])
    assert abs(len(pcm) / a.rate - 1.0) < 0.1  # the whole second of sound
    spectrum = np.abs(np.fft.rfft(pcm[:a.rate // 2]))
    assert abs(np.argmax(spectrum) * a.rate / (a.rate // 2 * 2) * 2 - 440) < 5  # still the 440 Hz tone


def test_batch_index_links_reports(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.html").write_text("<html></html>")
    page = write_index(tmp_path / "index.html", [
        {"name": "a.mp4", "href": "sub/a.html", "status": "ok", "frames": 10, "faces": 3, "seconds": "1.0 s",
         "error": ""},
        {"name": "b.mp4", "href": None, "status": "failed", "frames": 0, "faces": 0, "seconds": "",
         "error": "cannot read b.mp4"}])
    html = page.read_text()
    assert 'href="sub/a.html"' in html and "cannot read b.mp4" in html and "http" not in html


def test_cli_report_beside_the_csv_and_refused_collisions(tmp_path, capsys, tiny_bundle, group_video):
    code, out, err = _cli(["analyze", str(group_video), "-o", str(tmp_path / "o.csv"), "--report",
                           *_common(tiny_bundle)], capsys)
    assert code == 0, err
    html = (tmp_path / "o.html").read_text(encoding="utf-8")
    assert "group.mp4" in html and "wrote HTML report" in out
    assert len(re.findall(r'<tr id="face-\d+">', html)) >= 1
    assert "rtfer analyze" in html
    code, _, err = _cli(["analyze", str(group_video), "-o", str(tmp_path / "x.csv"), "--report",
                         str(tmp_path / "x.csv"), *_common(tiny_bundle)], capsys)
    assert code == 2 and "would overwrite" in err
    code, _, err = _cli(["analyze", str(group_video), "-o", str(tmp_path / "y.csv"), "--report",
                         str(tmp_path / "y.txt"), *_common(tiny_bundle)], capsys)
    assert code == 2 and ".html" in err


def test_batch_writes_a_report_per_video_and_an_index(tmp_path, capsys, tiny_bundle, group_video):
    import shutil

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(group_video, src / "a.mp4")
    shutil.copy(group_video, src / "sub" / "b.mp4")
    out = tmp_path / "out"
    code, stdout, err = _cli(["analyze", str(src), "--out-dir", str(out), "--report", *_common(tiny_bundle)], capsys)
    assert code == 0, err
    assert (out / "a.html").is_file() and (out / "sub" / "b.html").is_file()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="a.html"' in index and 'href="sub/b.html"' in index
    assert not list(out.rglob(".*.part*"))


def test_batch_plan_reports_beside_csvs_and_index_collision(tmp_path):
    from rtfer.batch import plan_batch
    from rtfer.errors import InputError

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.mp4"):
        (src / name).write_bytes(b"x")
    plan = plan_batch([src], tmp_path / "out", report="")
    assert sorted(Path(t.report).relative_to(tmp_path / "out").as_posix() for t in plan.todo) == ["a.html",
                                                                                               "sub/b.html"]
    assert all(not t.report for t in plan_batch([src], tmp_path / "out").todo)
    (src / "index.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="index"):
        plan_batch([src], tmp_path / "out", report="")
    plan_batch([src], tmp_path / "out", report=str(tmp_path / "all.html"))  # another index path: fine


def test_annotated_video_of_a_phone_clip_stays_upright(tmp_path):
    """A clip stored sideways with a display rotation: the annotated copy is upright and carries no rotation flag."""
    from rtfer.capture import open_source

    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:12, :20] = 255
    path = tmp_path / "phone.mp4"
    write_rotated_clip(path, stored, 90)
    out = tmp_path / "ann.mp4"
    empty = Faces(np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0), np.zeros(0, int))
    with open_source(path) as src, AnnotatedVideoSink(out, src.fps, audio_from=path) as sink:
        upright = []
        for fr in src:
            upright.append(fr.image)
            sink.append(FrameResult(fr.index, fr.time_s, "p", empty, EmotionScores(np.zeros((0, 7))),
                                    EmotionScores(np.zeros((0, 7))), image=fr.image))
    assert sink.audio_mode is None  # no audio in the source: none in the copy
    with open_source(out) as back:
        frame = next(back).image
    assert frame.shape == upright[0].shape == (64, 48, 3)
    assert np.abs(frame.astype(int) - upright[0].astype(int)).mean() < 8
