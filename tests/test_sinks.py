"""Sinks: CSV/JSONL schema and incremental flushing, annotated video, summary PNG and bounded accumulation."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtfer import sinks
from rtfer.sinks import timeline
from rtfer.annotate import EMOTION_COLORS_BGR, annotate, face_labels
from rtfer.capture import open_source
from rtfer.errors import OutputError
from rtfer.labels import CLASSES
from rtfer.sinks import (CSV_COLUMNS, AnnotatedVideoSink, CSVSink, JSONLSink, SummaryAccumulator, SummarySink,
                         result_records, summary_table)
from rtfer.types import EmotionScores, Faces, FrameResult

EXPECTED_COLUMNS = ("source, frame, time_s, face_id, x1, y1, x2, y2, det_score, surprise, fear, disgust, happiness, "
                    "sadness, anger, neutral, emotion, confidence, sentiment5, sentiment3, valence").split(", ")


def _peaked(cls: int, conf: float) -> np.ndarray:
    p = np.full(7, (1 - conf) / 6, np.float32)
    p[cls] = conf
    return p


def _result(index: int, t: float, n: int = 2, image: np.ndarray | None = None, cls: int = 3) -> FrameResult:
    xyxy = np.array([[10.04 + 40 * i, 20.06, 40.45 + 40 * i, 60.0] for i in range(n)], np.float32).reshape(-1, 4)
    faces = Faces(xyxy, np.zeros((n, 5, 2)), np.full(n, 0.87654), np.arange(n) + 5)
    smoothed = np.stack([_peaked((cls + i) % 7, 0.7) for i in range(n)]) if n else np.zeros((0, 7))
    raw = np.stack([_peaked(6, 0.55) for _ in range(n)]) if n else np.zeros((0, 7))
    return FrameResult(index, t, "clip.mp4", faces, EmotionScores(raw), EmotionScores(smoothed), image=image)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def test_schema_matches_design():
    assert list(CSV_COLUMNS) == EXPECTED_COLUMNS
    assert list(sinks.columns(raw=True)) == EXPECTED_COLUMNS + [f"raw_{c}" for c in CLASSES] + ["raw_emotion"]


def test_csv_rows_values_and_no_face_row(tmp_path):
    path = tmp_path / "out" / "t.csv"  # parent is created
    with CSVSink(path) as sink:
        sink.append(_result(0, 0.0333333))
        sink.append(_result(1, 0.0666666, n=0))
    header, rows = _read_csv(path)
    assert header == EXPECTED_COLUMNS
    assert len(rows) == 3
    r = rows[0]
    assert (r["source"], r["frame"], r["time_s"], r["face_id"]) == ("clip.mp4", "0", "0.033", "5")
    assert (r["x1"], r["y1"], r["x2"], r["y2"], r["det_score"]) == ("10.0", "20.1", "40.5", "60.0", "0.8765")
    assert r["happiness"] == "0.7000" and r["surprise"] == "0.0500"
    assert (r["emotion"], r["confidence"], r["sentiment5"], r["sentiment3"]) == ("happiness", "0.7000",
                                                                                  "very_positive", "positive")
    assert float(r["valence"]) == pytest.approx(0.7 + 0.05 - 4 * 0.05)
    assert rows[1]["face_id"] == "6" and rows[1]["emotion"] == "sadness"
    assert abs(sum(float(rows[1][c]) for c in CLASSES) - 1) < 1e-3
    empty = rows[2]
    assert (empty["source"], empty["frame"], empty["time_s"]) == ("clip.mp4", "1", "0.067")
    assert all(empty[c] == "" for c in EXPECTED_COLUMNS[3:])


def test_csv_raw_columns_and_source_name(tmp_path):
    path = tmp_path / "raw.csv"
    with CSVSink(path, raw=True, source_name="renamed.mp4") as sink:
        sink.append(_result(0, 0.0, n=1))
    header, rows = _read_csv(path)
    assert header[-8:] == [f"raw_{c}" for c in CLASSES] + ["raw_emotion"]
    assert rows[0]["source"] == "renamed.mp4"
    assert rows[0]["raw_neutral"] == "0.5500" and rows[0]["raw_emotion"] == "neutral"
    assert rows[0]["emotion"] == "happiness"


def test_untracked_faces_use_their_index():
    res = _result(0, 0.0, n=2)
    res.faces.track_ids[:] = -1
    assert [r["face_id"] for r in result_records(res)] == [0, 1]


def test_package_layering_and_reexports():
    """rtfer.sinks is a package, one module per job: base at the bottom, no cycles, no private imports between its
    modules, no heavy module at import time; the package re-exports the defining modules' objects."""
    import subprocess
    import sys

    from package_helpers import assert_layered

    graph = assert_layered("rtfer.sinks")
    assert graph["rtfer.sinks.base"] == graph["rtfer.sinks.atomic"] == set()
    assert graph["rtfer.sinks.plot"] == {"rtfer.sinks.atomic"}
    assert graph["rtfer.sinks.timeline"] == graph["rtfer.sinks.video"] == {"rtfer.sinks.base", "rtfer.sinks.atomic"}
    assert graph["rtfer.sinks.summary"] == {"rtfer.sinks.base", "rtfer.sinks.plot", "rtfer.sinks.atomic"}
    code = ("import sys, rtfer.sinks as s, rtfer.sinks.video as v, rtfer.sinks.summary as m; "
            "assert s.AnnotatedVideoSink is v.AnnotatedVideoSink and s.SummaryAccumulator is m.SummaryAccumulator; "
            "heavy = [n for n in ('cv2', 'av', 'matplotlib') if n in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def test_csv_flushes_before_close(tmp_path, monkeypatch):
    final = tmp_path / "live.csv"
    sink = CSVSink(final).open()
    path = sink.output.tmp  # written beside the final path, renamed into place on close
    assert path.parent == final.parent and path.name.startswith(".live.") and path.suffix == ".csv"
    assert _read_csv(path)[0] == EXPECTED_COLUMNS  # header is on disk immediately
    for k in range(24):  # 48 rows: under the row threshold and (immediately) under the time threshold
        sink.append(_result(k, k / 30))
    n_early = len(_read_csv(path)[1])
    sink.append(_result(24, 0.8))  # 50 rows: a batch is due
    header, rows = _read_csv(path)
    assert n_early < 50 and len(rows) == 50  # whole frames, read while the sink is open
    monkeypatch.setattr(timeline, "FLUSH_SECONDS", 0.05)  # where the sinks read it
    sink.append(_result(25, 0.85))
    time.sleep(0.06)
    sink.append(_result(26, 0.9))  # time threshold passed: flushed
    assert len(_read_csv(path)[1]) == 54
    assert not final.exists()
    sink.close()
    assert not path.exists() and len(_read_csv(final)[1]) == 54
    sink.close()  # idempotent
    with pytest.raises(OutputError, match="closed"):
        sink.append(_result(27, 1.0))


@pytest.mark.parametrize("case", ["directory", "under_a_file"])
def test_unwritable_path_raises_at_open(tmp_path, case):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    path = tmp_path if case == "directory" else blocker / "out.csv"
    for make in (lambda: CSVSink(path), lambda: JSONLSink(path), lambda: AnnotatedVideoSink(path, 25),
                 lambda: SummarySink(path)):
        with pytest.raises(OutputError) as info:
            make().open()
        assert "\n" not in str(info.value)


def test_append_checks_header(tmp_path):
    path = tmp_path / "t.csv"
    with CSVSink(path) as sink:
        sink.append(_result(0, 0.0, n=1))
    with CSVSink(path, append=True) as sink:  # same schema: continues
        sink.append(_result(1, 0.1, n=1))
    assert [r["frame"] for r in _read_csv(path)[1]] == ["0", "1"]
    with pytest.raises(OutputError, match="header does not match"):
        CSVSink(path, raw=True, append=True).open()
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(OutputError, match="header does not match"):
        CSVSink(other, append=True).open()


def test_jsonl_sink(tmp_path):
    path = tmp_path / "t.jsonl"
    with JSONLSink(path, raw=True) as sink:
        sink.append(_result(3, 0.1, n=2))
        sink.append(_result(4, 0.2, n=0))
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(objs) == 3
    assert list(objs[0]) == list(sinks.columns(raw=True))
    assert objs[0]["frame"] == 3 and objs[0]["face_id"] == 5 and objs[0]["happiness"] == 0.7
    assert objs[2]["face_id"] is None and objs[2]["emotion"] is None and objs[2]["time_s"] == 0.2


def test_annotate_draws_boxes_in_emotion_colour(group_photo):
    image = np.ascontiguousarray(group_photo[:240, :320])
    res = _result(0, 0.0, n=1)
    out = annotate(image, res)
    assert out.shape == image.shape and out is not image
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(image, group_photo[:240, :320])  # input untouched
    colour = np.array(EMOTION_COLORS_BGR["happiness"])
    # a point on the left box edge (x=10, y=20..60) has the box colour (anti-aliased); inside, the photo is intact
    assert np.abs(out[40, 10].astype(int) - colour).max() < 40
    np.testing.assert_array_equal(out[40, 20:30], image[40, 20:30])
    labels, conf = face_labels(res.smoothed.probs, "sentiment3")
    assert labels == ["positive"] and conf[0] == pytest.approx(0.75)
    assert not np.array_equal(annotate(image, res, "sentiment5"), image)
    with pytest.raises(ValueError, match="unknown scale"):
        annotate(image, res, "valence")


def test_annotated_video_frame_count(tmp_path, group_photo):
    path = tmp_path / "ann.mp4"
    n = 12
    with AnnotatedVideoSink(path, fps=25) as sink:
        for k in range(n):
            img = np.ascontiguousarray(group_photo[100 + 2 * k:341 + 2 * k, 200 + 4 * k:521 + 4 * k])  # odd size
            sink.append(_result(k, k / 25, n=2, image=img))
    with open_source(path) as src:
        frames = list(src)
        assert (src.width, src.height) == (320, 240)
    assert len(frames) == n
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(n) / 25, atol=2e-3)
    with pytest.raises(ValueError, match="FrameResult.image"):
        with AnnotatedVideoSink(tmp_path / "x.mp4", 25) as sink:
            sink.append(_result(0, 0.0))


def test_summary_png_and_table(tmp_path):
    path = tmp_path / "summary.png"
    with SummarySink(path, title="clip.mp4") as sink:
        for k in range(90):
            t = k / 30
            res = _result(k, t, n=2, cls=3 if k < 60 else 5)  # face 5: happiness then anger; face 6 follows +1
            sink.append(res)
        sink.append(_result(90, 3.0, n=0))
        summary = sink.summary()
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 500
    f5 = next(f for f in summary.faces if f.face_id == 5)
    assert f5.frames == 90 and f5.dominant == "happiness" and f5.dominant_share == pytest.approx(60 / 90)
    assert f5.seconds == pytest.approx(3.0, abs=0.05)
    expected_val = (60 * (0.7 + 0.05 - 0.2) + 30 * (0.05 + 0.05 - (0.7 + 0.15))) / 90
    assert f5.mean_valence == pytest.approx(expected_val, abs=1e-4)
    assert summary.frames == 91 and summary.frames_without_faces == 1
    table = summary_table(summary)
    assert "happiness" in table and "66.7%" in table and "91 frames, 1 without faces, 2 faces" in table


def test_summary_png_without_faces(tmp_path):
    path = tmp_path / "empty.png"
    with SummarySink(path) as sink:
        sink.append(_result(0, 0.0, n=0))
    assert cv2.imread(str(path)) is not None


def test_summary_memory_is_bounded():
    acc = SummaryAccumulator(max_bins=64, max_series=4)
    probs = np.stack([_peaked(3, 0.6), _peaked(6, 0.6)]).astype(np.float64)
    ids = np.array([0, 1])
    sizes = []
    for k in range(100_000):  # ~55 minutes at 30 fps, plus a new face every 1,000 frames
        ids[1] = 1 + k // 1000
        acc.add(k / 30, ids, probs)
        if k % 20_000 == 0:
            sizes.append(acc.nbytes())
    assert len(acc.series) <= 4 and all(s.shape == (64, 9) for s in acc.series.values())
    assert acc.nbytes() <= 4 * 64 * 9 * 8 + 64 * 3 * 8 + 200 * 101  # face series, the room series, totals
    assert sizes[-1] <= sizes[1] + 200 * 100  # only per-face totals grow, not with the frame count
    assert acc.bin_s * 64 >= 100_000 / 30  # bins widened to cover the whole run
    t, p, v = acc.binned(0)
    assert len(t) <= 64 and np.allclose(p.sum(1), 1) and np.allclose(v, 0.6 - 4 * 0.4 / 6 + 0.4 / 6)
    assert acc.summary().faces[0].frames == 100_000
