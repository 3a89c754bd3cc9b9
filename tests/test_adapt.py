"""rtfer adapt: few-shot adaptation from a folder of labelled examples.

The recovery test simulates a domain shift on FER2013 val faces (strong colour cast, blur, low contrast), adapts the
default bundle on 10 faces per class and tests on other faces of the same split under the same shift.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from rtfer import adapt as A
from rtfer.bundle import BundleSpec, load_bundle, resolve_bundle_path
from rtfer.errors import InputError, OutputError
from rtfer.labels import CLASS_INDEX, CLASSES, FER2013_FOLDER_TO_CLASS

FER_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013" / "val"
PER_CLASS = 10
TEST_PER_CLASS = 40


def shift(image_bgr: np.ndarray) -> np.ndarray:
    """A strong, consistent camera/lighting change: blur, low contrast, an orange colour cast."""
    import cv2

    x = cv2.GaussianBlur(image_bgr.astype(np.float32), (0, 0), 1.0)
    x = (x - x.mean()) * 0.5 + x.mean()
    x = x * np.array([0.45, 0.85, 1.35], np.float32) + np.array([10, 30, 60], np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def base_spec() -> BundleSpec:
    return BundleSpec.read(resolve_bundle_path("default"))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """EXAMPLES (10 shifted faces per class, FER2013 folder names) and a shifted test set of other faces."""
    import cv2

    if not FER_VAL.is_dir():
        pytest.skip(f"FER2013 val images not found at {FER_VAL} (../shared is absent in a fresh clone)")
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("adapt")
    examples = root / "examples"
    test_x, test_y = [], []
    for folder in sorted(FER_VAL.iterdir()):
        files = sorted(folder.glob("*.jpg"))
        rng.shuffle(files)
        (examples / folder.name).mkdir(parents=True)
        for f in files[:PER_CLASS]:
            cv2.imwrite(str(examples / folder.name / f"{f.stem}.png"), shift(cv2.imread(str(f))))
        for f in files[PER_CLASS:PER_CLASS + TEST_PER_CLASS]:
            test_x.append(shift(cv2.imread(str(f)))[:, :, ::-1])
            test_y.append(CLASS_INDEX[FER2013_FOLDER_TO_CLASS[folder.name]])
    return root, examples, np.stack(test_x), np.asarray(test_y)


@pytest.fixture(scope="module")
def adapted(shifted):
    root, examples, _, _ = shifted
    out = root / "adapted"
    result = A.adapt(examples, out, bundle="default")
    return result, out


def test_adaptation_recovers_accuracy_under_a_domain_shift(shifted, adapted):
    _, _, test_x, test_y = shifted
    result, out = adapted
    assert result.output == out and result.chosen, result.table()
    assert result.after.beats(result.before)  # on the held-out folds of the examples
    assert result.after.accuracy >= result.before.accuracy and result.after.nll < result.before.nll
    base = load_bundle("default", backend="onnxruntime", device="cpu")
    new = load_bundle(out, backend="onnxruntime", device="cpu")
    base_acc = float(np.mean(base.predict(test_x).argmax(1) == test_y))
    new_acc = float(np.mean(new.predict(test_x).argmax(1) == test_y))
    logging.getLogger(__name__).info("shifted test set (%d faces): base %.3f, adapted %.3f (%s)", len(test_y),
                                     base_acc, new_acc, result.chosen)
    assert new_acc >= base_acc + 0.02, (base_acc, new_acc, result.table())


def test_adapted_bundle_records_provenance_and_no_paths(shifted, adapted, base_spec):
    root, examples, _, _ = shifted
    result, out = adapted
    text = (out / "bundle.json").read_text(encoding="utf-8")
    meta = json.loads(text)
    prov = meta["adaptation"]
    assert prov["base"] == {"name": base_spec.name, "version": base_spec.version, "sha256": A.bundle_hash(base_spec),
                            "members": {m.name: m.sha256 for m in base_spec.members}}
    assert prov["examples"]["per_class"] == {c: PER_CLASS for c in CLASSES}
    assert prov["method"] == result.chosen
    cv = prov["cross_validation"]
    assert cv["grouped_by"] == "source file" and cv["after"]["accuracy"] >= cv["before"]["accuracy"]
    assert set(cv["after"]["recall"]) == set(CLASSES)
    # no example names, no paths
    assert str(root) not in text and str(examples) not in text
    assert not [p.stem for p in examples.rglob("*.png") if p.stem in text]
    spec = BundleSpec.read(out)
    spec.verify()
    assert spec.name == f"{base_spec.name}-adapted"
    for m in spec.members:  # unchanged members are byte-identical copies; fine-tuned ones are new files
        base_m = next(b for b in base_spec.members if b.name == m.name)
        assert (m.sha256 == base_m.sha256) == (m.name not in prov["changed_members"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".adapted.")]  # temporary folders gone


def test_cli_prints_before_after_and_refuses_an_existing_output(shifted, adapted, capsys):
    from rtfer.cli import main

    _, examples, _, _ = shifted
    result, out = adapted
    assert "before" in result.table() and "accuracy" in result.table()
    mtime = (out / "bundle.json").stat().st_mtime
    assert main(["adapt", str(examples), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert (out / "bundle.json").stat().st_mtime == mtime
    # --overwrite replaces it (write step only: the fitted result is reused)
    A.write_adapted_bundle(result, out, overwrite=True)
    BundleSpec.read(out).verify()


def test_adapted_bundle_runs_in_analyze(shifted, adapted, tmp_path):
    import cv2

    from rtfer.cli import main

    _, examples, _, _ = shifted
    _, out = adapted
    image = cv2.resize(cv2.imread(str(next((examples / "happy").iterdir()))), (192, 192))
    cv2.imwrite(str(tmp_path / "face.png"), image)
    csv = tmp_path / "face.csv"
    assert main(["analyze", str(tmp_path / "face.png"), "--bundle", str(out), "-o", str(csv), "-q",
                 "--backend", "onnxruntime"]) == 0
    assert csv.read_text().startswith("source,")


def test_nothing_written_when_no_candidate_beats_the_base(shifted, monkeypatch, tmp_path, capsys):
    from rtfer.cli import main

    _, examples, _, _ = shifted
    # every candidate reproduces the base bundle exactly: equal is not better
    monkeypatch.setattr(A, "candidate_fitters", lambda: {"same": lambda spec, feats, *a: A._base_params(spec, feats)})
    out = tmp_path / "never"
    assert main(["adapt", str(examples), "-o", str(out), "--folds", "2"]) == 3
    captured = capsys.readouterr()
    assert not out.exists() and not list(tmp_path.iterdir())
    assert "nothing written" in captured.err and "before" in captured.out


# -- examples folder --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("happy", "happiness"), ("Happy", "happiness"), ("HAPPINESS", "happiness"), ("angry", "anger"),
    ("Anger", "anger"), ("sad", "sadness"), ("surprised", "surprise"), ("Surprise", "surprise"),
    ("disgusted", "disgust"), ("fearful", "fear"), ("Fear", "fear"), ("neutral", "neutral"), ("contempt", None),
    ("faces", None)])
def test_folder_names(name, expected):
    assert A.class_for_folder(name) == expected


def _crop_folder(root: Path, names: list[str], n: int = 3) -> Path:
    import cv2

    rng = np.random.default_rng(1)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    return root


def test_folder_mapping_merges_variants_and_rejects_unknown_names(tmp_path, base_spec):
    ex = A.collect_examples(_crop_folder(tmp_path / "ok", ["Happy", "happiness", "ANGRY", "sad"]), base_spec)
    assert ex.per_class() == {**{c: 0 for c in CLASSES}, "happiness": 6, "anger": 3, "sadness": 3}
    assert ex.kinds == {"crop": 12} and len(np.unique(ex.groups)) == 12
    with pytest.raises(InputError, match=r"unknown emotion folder 'contempt'.*accepted names.*happy"):
        A.collect_examples(_crop_folder(tmp_path / "bad", ["happy", "contempt"]), base_spec)


def test_crops_rule(tmp_path, base_spec):
    assert A.looks_like_crop(np.zeros((48, 48, 3), np.uint8))
    assert A.looks_like_crop(np.zeros((100, 110, 3), np.uint8))
    assert not A.looks_like_crop(np.zeros((480, 640, 3), np.uint8))
    assert not A.looks_like_crop(np.zeros((48, 120, 3), np.uint8))
    # --crops yes takes a large image as a crop (no detection)
    import cv2

    (tmp_path / "sad").mkdir()
    cv2.imwrite(str(tmp_path / "sad" / "big.png"), np.full((400, 300, 3), 128, np.uint8))
    ex = A.collect_examples(tmp_path, base_spec, crops="yes")
    assert ex.kinds == {"crop": 1} and ex.crops[48].shape == (1, 48, 48, 3)


def test_bad_inputs_are_one_line_errors(tmp_path, base_spec, caplog, capsys):
    import cv2

    from rtfer.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="is empty"):
        A.collect_examples(empty, base_spec)
    (tmp_path / "hollow" / "happy").mkdir(parents=True)
    with pytest.raises(InputError, match="hold no files"):
        A.collect_examples(tmp_path / "hollow", base_spec)
    # no face in any photo (detector runs on the large images)
    noface = tmp_path / "noface" / "sad"
    noface.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(noface / f"wall{i}.jpg"), np.full((240, 320, 3), 90 + 40 * i, np.uint8))
    (noface / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"no face found in any of the 3 example files.*1 unreadable"):
        A.collect_examples(tmp_path / "noface", base_spec)
    # unreadable files are skipped with a count
    mixed = _crop_folder(tmp_path / "mixed", ["happy", "sad"], n=2)
    (mixed / "happy" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    (mixed / "sad" / "notes.txt").write_text("hello")
    (mixed / "sad" / "clip.mp4").write_bytes(b"\x00" * 64)
    with caplog.at_level(logging.WARNING, logger="rtfer.adapt"):
        ex = A.collect_examples(mixed, base_spec)
    assert ex.unreadable == 3 and len(ex) == 4
    assert any("skipped 3 unreadable files" in r.getMessage() for r in caplog.records)
    # through the CLI: exit 2, one line
    for folder, needle in ((empty, "is empty"), (tmp_path / "noface", "no face found")):
        assert main(["adapt", str(folder), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err
    assert main(["adapt", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_before_any_work(tmp_path, base_spec):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists; use --overwrite"):
        A.check_output(out, base_spec, overwrite=False)
    with pytest.raises(OutputError, match="not a bundle folder"):
        A.check_output(out, base_spec, overwrite=True)
    with pytest.raises(OutputError, match="base bundle itself"):
        A.check_output(base_spec.path, base_spec, overwrite=True)


def test_video_clip_examples_are_sampled_and_grouped(tmp_path, base_spec, group_photo):
    """A clip in a class folder: a sample of its frames, the largest face of each, all one source file."""
    from media_helpers import pan_frames, write_test_video

    (tmp_path / "happy").mkdir()
    write_test_video(tmp_path / "happy" / "clip.mp4", pan_frames(group_photo, 12, out_width=480), fps=12)
    _crop_folder(tmp_path, ["happy", "sad"], n=3)
    ex = A.collect_examples(tmp_path, base_spec, clip_frames=4)
    assert ex.kinds == {"video_frame": 4, "crop": 6}
    assert ex.per_class()["happiness"] == 7 and ex.per_class()["sadness"] == 3
    video = [g for g in np.unique(ex.groups) if np.sum(ex.groups == g) == 4]
    assert len(video) == 1 and len(np.unique(ex.groups)) == 7
    # frames of the clip never sit on both sides of a split
    for k in (2, 3, 5):
        folds = A.grouped_folds(ex.labels, ex.groups, k)
        holding = [i for i, f in enumerate(folds) if np.any(ex.groups[f] == video[0])]
        assert len(holding) == 1
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(ex)))
