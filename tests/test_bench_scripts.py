"""The peer and start-up benchmark scripts: their parsing, tables and argument errors (no fer, no network)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from bench_helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


_load = load_benchmark


def test_fer_peer_counts_faces_per_frame_and_renders_table(tmp_path):
    peer = _load("fer_peer")
    path = tmp_path / "clip.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "frame", "time_s", "face_id", "x1"])
        w.writerows([["c", 0, 0.0, "", ""], ["c", 1, 0.04, 1, 3], ["c", 1, 0.04, 2, 5], ["c", 2, 0.08, 1, 3]])
    assert peer.faces_per_frame_rtfer(path) == [0, 2, 1]
    r = peer.ToolRun("rtfer", 2.0, 3, 1.0, 2, 0)
    f = peer.ToolRun("fer", 5.0, 3, 0.5, 1, 0)
    row = {"clip": "c.mp4", "width": 640, "height": 360, "fps": 24.0, "frames": 3, "length_s": 10.0,
           "rtfer": r.__dict__, "fer": f.__dict__, "rtfer_realtime": r.realtime(10.0), "fer_realtime": f.realtime(10.0),
           "speed_ratio": 2.5}
    table = peer.markdown([row], "note")
    assert "| c.mp4 | 640×360 @ 24 fps | 10.0 s | 2.0 s | 5.00× | 5.0 s | 2.00× | 2.50× | 1.00, 2 | 0.50, 1 |" in table


def test_fer_peer_reuses_a_ready_venv_without_network(tmp_path, monkeypatch):
    peer = _load("fer_peer")
    venv = tmp_path / "venv"
    py = peer.venv_python(venv)
    py.parent.mkdir(parents=True)
    py.write_text("")
    (venv / peer.MARKER).write_text(json.dumps({"fer": peer.FER_VERSION, "installed": {"fer": peer.FER_VERSION}}))
    monkeypatch.setattr(peer.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no pip")))
    assert peer.ensure_venv(venv) == py


def test_bench_scripts_bad_input_is_exit_2(tmp_path, capsys):
    assert _load("fer_peer").main([str(tmp_path / "missing.mp4")]) == 2
    assert "no such video" in capsys.readouterr().err
    assert _load("first_row").main([str(tmp_path / "missing.mp4")]) == 2
    assert "no such input" in capsys.readouterr().err


def test_classifier_cost_of_a_flip_combiner(tiny_bundle, tmp_path, capsys, monkeypatch):
    import shutil

    cost = _load("classifier_cost")
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["combiners"] = {"flip": {**meta["ensemble"], "temperature": 1.0, "tta_flip": True}}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    monkeypatch.setattr(cost, "time_call", lambda fn, repeats, **k: (fn(), 0.008)[1])  # no timing here: the plumbing
    out = tmp_path / "cost.json"
    assert cost.main(["--bundle", str(bundle), "--combiner", "flip", "--batches", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["combiner"] == "flip"
    assert result["rows"][-1]["what"].endswith("each face and its mirror)") and result["rows"][-1]["ms_per_face"] == 4.0
    assert "combiner flip" in capsys.readouterr().out
    # the recorded cost is the default combiner's: --record with another combiner is refused before any work
    assert cost.main(["--bundle", str(bundle), "--combiner", "flip", "--record"]) == 2
    assert "--record stores the default combiner's cost" in capsys.readouterr().err


def test_crowd_clip_tiles_both_classrooms_and_their_mirror_images(tmp_path, capsys):
    import cv2
    import numpy as np

    crowd = _load("crowd_clip")
    rng = np.random.default_rng(0)
    for stem, fps, n in (("unlabeled_george210843_classroom_6faces", 24.0, 30),
                         ("unlabeled_george210843_classroom_4faces", 30.0, 45)):
        w = cv2.VideoWriter(str(tmp_path / f"{stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
        base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        for i in range(n):
            w.write(np.ascontiguousarray(np.roll(base, i, axis=1)))
        w.release()
    out = tmp_path / "crowd" / "mosaic.mp4"
    assert crowd.main(["--videos", str(tmp_path), "-o", str(out), "--fps", "10"]) == 0
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img.astype(np.int16))
    assert len(frames) == 12  # 1.25 s (the 6-face stand-in is the shorter: 30 frames at 24 fps) at 10 fps
    f = frames[5]
    assert f.shape == (96, 128, 3)
    # the bottom row is the top row's clips mirrored (lossy codec: compare coarsely)
    assert np.abs(f[48:, :64] - f[:48, 64:][:, ::-1]).mean() < 12
    assert np.abs(f[48:, 64:] - f[:48, :64][:, ::-1]).mean() < 12
    assert np.abs(f[48:, :64] - f[:48, 64:]).mean() > 30  # and really mirrored
    assert not list(out.parent.glob(".*part*"))
    assert crowd.main(["--videos", str(tmp_path / "none"), "-o", str(out)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_tta_views_are_the_runtimes_views(tiny_bundle):
    """Each view is what it says (a 2 px shift moves the content, ``~`` mirrors), and averaging a face and its
    mirror image gives exactly the runtime's flip-TTA answer."""
    import numpy as np

    from rtfer.bundle import load_bundle

    tta = _load("tta_views")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 48, 48, 3), dtype=np.uint8)
    assert np.array_equal(tta.view(images, "id~"), images[:, :, ::-1])
    right = tta.view(images, "right")
    assert np.array_equal(right[:, 5:40, 10:40], images[:, 5:40, 8:38])
    assert tta.view(images, "zoom_in").shape == images.shape and not np.array_equal(tta.view(images, "zoom_in"), images)
    b = load_bundle(tiny_bundle, backend="onnxruntime", device="cpu")
    b.tta_flip = False
    per_view = {v: tta.member_logits(b, tta.view(images, v), batch=4) for v in ("id", "id~")}
    b.tta_flip = True
    want = b.combine(b.member_probs(images)).argmax(1)
    labels = want.copy()
    labels[0] = (labels[0] + 1) % 7  # one wrong answer: accuracy 5/6 if the views are combined as the runtime does
    b.tta_flip = False
    acc, _ = tta.score(b, per_view, ["id", "id~"], labels)
    assert acc == 5 / 6


def test_smoothing_table_keeps_a_row_that_says_a_combiner_is_unavailable():
    """smoothing_stability --combiner tilted: there is no tilted_balanced, and its one-cell row must not end the run."""
    table = _load("smoothing_stability").format_table(
        [{"combiner": "tilted", "clip": "classroom", "valence_mean": -0.05},
         {"combiner": "tilted_balanced", "clip": "unavailable: no such combiner"}])
    lines = table.splitlines()
    assert lines[0].split() == ["combiner", "clip", "valence_mean"] and len(lines) == 3
    assert lines[1].split()[-1] == "-0.050" and lines[2].split()[-1] == "-"
