"""The pipeline end to end on real faces (the group photo, panned into a short video) with a tiny bundle."""
from __future__ import annotations

import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import rtfer
from rtfer.pipeline import STAGES, AnalyzeOptions, Pipeline
from rtfer.run import process_file


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return Pipeline(AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu"))


def test_import_rtfer_is_light():
    code = ("import sys, rtfer, rtfer.pipeline, rtfer.cli, rtfer.bundle; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'cv2', 'PyQt6', 'ray') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import rtfer pulled in {out}"


def test_results_per_frame_in_order_with_stable_ids(pipeline, group_video):
    results = pipeline.run(str(group_video))
    assert isinstance(results, types.GeneratorType)  # lazy, never a list
    seen = list(results)
    assert [r.index for r in seen] == list(range(24))
    assert all(b.time_s > a.time_s for a, b in zip(seen, seen[1:]))
    counts = [len(r.faces) for r in seen]
    assert min(counts) >= 2, counts
    for r in seen:
        assert set(STAGES) <= set(r.timings_ms)
        np.testing.assert_allclose(r.smoothed.probs.sum(1), 1, atol=1e-4)
        np.testing.assert_allclose(r.raw.probs.sum(1), 1, atol=1e-4)
        assert len(set(r.faces.track_ids.tolist())) == len(r.faces)  # no duplicate IDs in a frame
    # a slow pan: each face keeps its ID, so the ID-to-position order never changes
    for a, b in zip(seen, seen[1:]):
        common = set(a.faces.track_ids.tolist()) & set(b.faces.track_ids.tolist())
        for tid in common:
            xa = a.faces.xyxy[a.faces.track_ids == tid][0]
            xb = b.faces.xyxy[b.faces.track_ids == tid][0]
            assert np.abs(xa - xb).max() < 40, (tid, xa, xb)


def test_raw_matches_bundle_predict_on_the_same_crops(pipeline, group_photo, tmp_path):
    import cv2

    from rtfer.detection.align import align_faces

    path = tmp_path / "group.png"  # lossless, so the pipeline sees the same pixels
    cv2.imwrite(str(path), group_photo)
    (result,) = list(pipeline.run(str(path)))
    faces = pipeline.detector.detect(group_photo)
    assert len(result.faces) == len(faces) >= 5
    crops = {s: align_faces(group_photo, faces.landmarks, s, pipeline.bundle.alignment_template)[0]
             for s in pipeline.sizes}
    np.testing.assert_allclose(result.raw.probs, pipeline.bundle.predict(crops), atol=1e-5)
    np.testing.assert_allclose(result.smoothed.probs, result.raw.probs)  # single images are not smoothed


def test_every_n_tracks_between_detections(tiny_bundle, group_video):
    pipe = Pipeline(AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu", every=4))
    calls = []
    detect = pipe.detector.detect
    pipe.detector.detect = lambda image: calls.append(1) or detect(image)
    seen = list(pipe.run(str(group_video)))
    assert len(seen) == 24 and len(calls) == 6
    assert all(len(r.faces) >= 2 for r in seen)
    ids = [set(r.faces.track_ids.tolist()) for r in seen]
    assert ids[1] <= ids[0] | ids[2]  # propagated frames keep the detected IDs


def test_cancel_and_early_close_stop_threads(pipeline, group_video):
    before = threading.active_count()
    cancel = threading.Event()
    n = 0
    for _ in pipeline.run(str(group_video), cancel=cancel):
        n += 1
        if n == 3:
            cancel.set()
    assert n < 24
    gen = pipeline.run(str(group_video))
    next(gen)
    gen.close()
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.1)
    assert threading.active_count() <= before


def test_image_folder_rows_use_file_names(tiny_bundle, group_photo, tmp_path):
    import csv

    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), group_photo)
    cv2.imwrite(str(folder / "b.png"), np.full((120, 160, 3), 127, np.uint8))  # no face
    out = tmp_path / "out.csv"
    stats = process_file(folder, out, AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu"))
    rows = list(csv.DictReader(out.open()))
    assert stats.frames == 2
    a = [r for r in rows if r["source"] == "a.jpg"]
    b = [r for r in rows if r["source"] == "b.png"]
    assert len(a) >= 5 and all(r["frame"] == "0" for r in a)
    assert len(b) == 1 and b[0]["face_id"] == "" and b[0]["emotion"] == ""


def test_public_analyze_api(tiny_bundle, group_video):
    gen = rtfer.analyze(str(group_video), bundle=str(tiny_bundle), backend="onnxruntime", device="cpu")
    assert isinstance(gen, types.GeneratorType)
    first = next(gen)
    gen.close()
    assert first.index == 0 and len(first.faces) >= 2


def test_options_validation():
    with pytest.raises(ValueError):
        AnalyzeOptions(every=0)
    with pytest.raises(ValueError):
        AnalyzeOptions(smoothing="kalman")


def test_auto_backend_on_cpu_does_not_import_torch(tiny_bundle):
    import os

    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("an NVIDIA driver is present: torch is rightly consulted")
    code = (f"import sys, rtfer; b = rtfer.load_bundle({str(tiny_bundle)!r}); "
            "print(b.backend_name, b.device, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["onnxruntime", "cpu", "False"]


# -- per-track classification rate (--classify-rate) ---------------------------------------------------------------
def test_classify_schedule_rate_new_tracks_and_seek():
    from rtfer.pipeline import ClassifySchedule

    sched = ClassifySchedule(10.0)
    due = []
    for k in range(12):  # 30 fps: track 1 from frame 0, track 2 appears at frame 4, untracked -1 always
        ids = np.array([1, -1] + ([2] if k >= 4 else []))
        d = sched.due(ids, k / 30)
        sched.remember(ids[d], np.full((int(d.sum()), 7), 1 / 7))
        due.append(d.tolist())
    assert [d[0] for d in due] == [k % 3 == 0 for k in range(12)]  # every 3rd frame = 10 per second
    assert all(d[1] for d in due)
    assert [d[2] for d in due[4:]] == [True, False, False, True, False, False, True, False]  # first seen: at once
    assert sched.held_raw(np.array([1, 2])).shape == (2, 7)
    assert sched.due(np.array([1]), 0.0).all()  # time went back (seek / new source): every track is new
    assert ClassifySchedule(0.0).due(np.array([1, 1, 1]), 0.5).all()  # 0 = every frame
    at_24fps, n = ClassifySchedule(10.0), 0
    for k in range(240):
        if at_24fps.due(np.array([7]), k / 24)[0]:
            at_24fps.remember([7], np.ones((1, 7)))
            n += 1
    assert 95 <= n <= 105  # slots, not frame counts: 10 per second on average at 24 fps too
    with pytest.raises(ValueError, match="classify rate"):
        ClassifySchedule(-1)


def test_classify_schedule_reclassifies_when_the_smoother_lost_the_track():
    from rtfer.pipeline import ClassifySchedule
    from rtfer.smoothing import make_smoother

    sched, sm = ClassifySchedule(5.0), make_smoother("hmm", 0.5)
    ids = np.array([3])
    assert sched.due(ids, 0.0, sm).all()
    sm.update(ids, np.full((1, 7), 1 / 7), 0.0)
    sched.remember(ids, np.full((1, 7), 1 / 7))
    assert not sched.due(ids, 0.05, sm).any()
    sm.drop(ids)
    assert sched.due(ids, 0.1, sm).all()  # nothing to hold: classify now


def test_live_load_lowers_the_rate_before_frames_drop_and_recovers():
    from rtfer.pipeline import ClassifySchedule

    sched = ClassifySchedule(0.0, adaptive=True, min_rate=1.0)
    for k in range(3):
        sched.due(np.array([1]), k / 30)
    assert sched.effective_period == 0.0
    for _ in range(20):  # classifying takes twice the frame interval
        sched.observe_load(2 / 30)
    assert sched.effective_period == pytest.approx(1.0)  # at most min_rate: then the source drops frames
    sched.observe_load(0.0, dropped=True)
    assert sched.effective_period == pytest.approx(1.0)
    for _ in range(40):  # load gone
        sched.observe_load(0.1 / 30)
    assert sched.effective_period == 0.0
    files = ClassifySchedule(10.0)  # files never adapt (every frame is processed anyway)
    files.observe_load(1.0, dropped=True)
    assert files.effective_period == pytest.approx(0.1)


def test_classify_rate_classifies_fewer_faces_and_keeps_every_row(tiny_bundle, group_video):
    pipe = Pipeline(AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu", classify_rate=5))
    classified = []
    member_probs = pipe.bundle.member_probs
    pipe.bundle.member_probs = lambda crops: classified.append(len(next(iter(crops.values())))) or member_probs(crops)
    seen = list(pipe.run(str(group_video)))
    rows = sum(len(r.faces) for r in seen)
    assert len(seen) == 24 and all(len(r.faces) >= 2 for r in seen)
    assert sum(classified) < 0.6 * rows  # 24 frames at 24 fps: each face about 5 times plus new tracks
    last = {}
    for r in seen:  # faces not classified hold their track's last raw probabilities
        np.testing.assert_allclose(r.smoothed.probs.sum(1), 1, atol=1e-4)
        for tid, raw in zip(r.faces.track_ids.tolist(), r.raw.probs):
            assert raw.sum() == pytest.approx(1, abs=1e-4)
            last.setdefault(tid, []).append(raw)
    held = sum(np.allclose(a, b) for seq in last.values() for a, b in zip(seq, seq[1:]))
    assert held >= 0.3 * rows
    with pytest.raises(ValueError, match="classify rate"):
        AnalyzeOptions(classify_rate=-2)


def test_classify_schedule_plans_a_batch_of_frames_before_classifying_it():
    from rtfer.pipeline import ClassifySchedule
    from rtfer.smoothing import make_smoother

    sched, sm = ClassifySchedule(10.0), make_smoother("hmm", 0.5)
    ids = np.array([4])
    due = [bool(sched.due(ids, k / 30, sm)[0]) for k in range(8)]  # the pipeline plans 8 frames, then infers
    assert due == [True, False, False, True, False, False, True, False]


def test_detection_width_drops_for_large_faces_with_a_full_pass_every_tenth_call():
    from rtfer.pipeline import DetectionWidth
    from rtfer.types import Faces

    def faces(side: float) -> Faces:
        return Faces(np.array([[10, 10, 10 + side, 10 + side]], np.float32), np.zeros((1, 5, 2), np.float32),
                     np.array([0.9], np.float32))

    w = DetectionWidth(640, 96)
    assert w.next() is None, "the first call sees the full frame"
    w.observe(faces(240), 480, None)  # a 240 px face in a 480 px frame: 96 px needs a 192 px frame
    widths = []
    for _ in range(20):
        widths.append(w.next())
        w.observe(faces(240), 480, widths[-1])
    assert widths.count(None) == 2 and set(widths) == {192, None}, widths
    assert widths.index(None) == 9, "one full-width pass in every ten calls"
    w.observe(Faces.empty(), 480, 192)
    assert w.next() is None, "a call that finds nothing goes back to the full width"
    w.observe(faces(30), 640, None)  # a small face: downscaling would lose it
    assert w.next() is None
    off = DetectionWidth(640, 0)
    off.observe(faces(240), 480, None)
    assert off.next() is None


def test_pipeline_detects_a_close_up_face_on_a_smaller_frame(tiny_bundle, group_video):
    """The pipeline asks the detector for a smaller frame once the faces it saw are large (det_face_px), and never
    with det_face_px 0; the faces found stay (nearly) the same. The group video's faces are small, so the test asks
    for only 48 px per face at detection scale."""
    from rtfer.detection import create_detector

    class Spy:
        def __init__(self) -> None:
            self.inner = create_detector("centerface", det_width=640)
            self.widths: list = []
            self.name = "spy"

        def detect(self, image, det_width=None):
            self.widths.append(det_width)
            return self.inner.detect(image, det_width=det_width)

    counts = {}
    for px in (0, 48):
        spy = Spy()
        pipe = Pipeline(AnalyzeOptions(bundle=str(tiny_bundle), every=1, det_face_px=px), detector=spy)
        counts[px] = [len(r.faces) for r in pipe.run(str(group_video))]
        if px == 0:
            assert set(spy.widths) == {None}
        else:
            assert any(w is not None and w < 640 for w in spy.widths), spy.widths
    same = np.mean(np.asarray(counts[0]) == np.asarray(counts[48]))
    assert same >= 0.9 and sum(counts[48]) >= 0.95 * sum(counts[0]), counts


def test_queued_frames_hold_their_pixels_only_when_results_keep_them(pipeline, group_video, monkeypatch):
    """A frame waiting between the front thread and the classifier holds its crops, not its image, unless the
    results keep images (a 4K frame is 25 MB, and up to twice --batch-frames frames wait)."""
    import rtfer.pipeline as pipeline_module

    queued = []
    real_put = pipeline_module.StopQueue.put

    def recording_put(self, item, *args, **kwargs):
        if isinstance(item, pipeline_module._Prepared):
            queued.append(item.image is not None)
        return real_put(self, item, *args, **kwargs)

    monkeypatch.setattr(pipeline_module.StopQueue, "put", recording_put)
    plain = list(pipeline.run(str(group_video)))
    assert len(queued) == 24 and not any(queued)
    assert all(r.image is None for r in plain)
    queued.clear()
    kept = list(pipeline.run(str(group_video), keep_images=True))
    assert len(queued) == 24 and all(queued)
    assert all(r.image is not None and r.image.shape[:2] == (r.height, r.width) for r in kept)
    for a, b in zip(plain, kept):  # the same rows either way
        assert (a.index, a.time_s, a.source, len(a.faces)) == (b.index, b.time_s, b.source, len(b.faces))
        assert (a.width, a.height) == (b.image.shape[1], b.image.shape[0])
        np.testing.assert_allclose(a.smoothed.probs, b.smoothed.probs, atol=1e-6)


def test_batch_frames_has_a_ceiling():
    from rtfer.pipeline import MAX_BATCH_FRAMES

    AnalyzeOptions(batch_frames=MAX_BATCH_FRAMES)
    with pytest.raises(ValueError, match=f"^--batch-frames must be at most {MAX_BATCH_FRAMES}, got 65: "):
        AnalyzeOptions(batch_frames=MAX_BATCH_FRAMES + 1)
