"""The pipeline end to end on real faces (the group photo, panned into a short video) with a tiny bundle."""
from __future__ import annotations

import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import rtfer
from rtfer.pipeline import STAGES, AnalyzeOptions, Pipeline, process_file


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
