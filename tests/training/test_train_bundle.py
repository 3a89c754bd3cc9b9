"""From two tiny training runs to a bundle that rtfer.load_bundle serves, with the fitted ensemble."""
from __future__ import annotations

import json

import numpy as np

import rtfer
from rtfer.ensemble import make_ensemble
from rtfer.training.__main__ import main
from rtfer.training.bundling import torch_member_probs


def test_runs_to_bundle_round_trip(tiny_packed, tmp_path):
    train, val = tiny_packed
    runs = []
    for name, model in (("ddamfn", "ddamfn_tiny"), ("convnext", "convnextv2_test")):
        out = tmp_path / name
        assert main(["train", "--train", str(train), "--val", str(val), "--out", str(out), "--epochs", "1",
                     "--model", model, "--input-size", "32", "--batch-size", "14", "--threads", "1",
                     "--set", "optim.sam=false", "--set", "model.color=gray", "--no-progress"]) == 0
        runs.append(out)
    assert main(["fit-stacker", *map(str, runs), "-o", str(tmp_path / "ens"), "--folds", "2"]) == 0
    bundle = tmp_path / "bundle"
    assert main(["export", *(str(r / "best.pt") for r in runs), "-o", str(bundle), "--ensemble",
                 str(tmp_path / "ens" / "ensemble.json"), "--name", "tiny", "--interim", "--parity-images", str(val),
                 "--data-note", "synthetic", "--align-size", "24"]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["interim"] is True and [m["name"] for m in meta["members"]] == ["ddamfn", "convnext"]
    assert [m["align_size"] for m in meta["members"]] == [24, 24]  # aligned small, upsampled as in training
    assert rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu").input_sizes == [24, 24]
    assert all(m["color"] == "gray" and m["input_size"] == 32 for m in meta["members"])
    assert set(meta["metrics"]["members"]) == {"ddamfn", "convnext"}
    assert meta["training"]["data"] == "synthetic"
    loaded = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu")
    with np.load(val) as z:
        crops = np.repeat(z["images"][:10], 3, axis=-1)
    got = loaded.predict(crops)
    # the same computation in torch from the checkpoints
    fit = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    probs = torch_member_probs([r / "best.pt" for r in runs], crops, fit["member_temperatures"])
    want = make_ensemble(fit["ensemble"], 2, fit["temperature"])(probs)
    assert np.allclose(got, want, atol=2e-3)
    assert got.shape == (10, 7) and np.allclose(got.sum(1), 1, atol=1e-5)
    # the class-balanced alternative travels with the bundle and serves the same computation
    assert set(meta["combiners"]) == {"balanced"}
    alt = fit["alternatives"]["balanced"]
    balanced = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", combiner="balanced").predict(crops)
    assert np.allclose(balanced, make_ensemble(alt, 2, alt["temperature"])(probs), atol=2e-3)
    shift = np.asarray(meta["combiners"]["balanced"]["posterior_shift"])  # valence goes through it
    assert shift.shape == (7,) and np.all(np.isfinite(shift)) and abs(shift.mean()) < 1e-9


def test_set_combiners_on_an_existing_bundle(tiny_bundle, tmp_path):
    import shutil

    import pytest

    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError, RtferError

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    spec = BundleSpec.read(bundle)
    assert spec.combiners == {}
    alt = {"method": "soft_vote", "weights": [0.9, 0.1], "temperature": 1.3, "fitted_as": "logistic_balanced",
           "metrics": {"accuracy": 0.5, "mean_class_accuracy": 0.6, "recall": {}}}
    fit = {"member_names": ["a", "b"], "ensemble": spec.ensemble, "temperature": spec.temperature,
           "alternatives": {"balanced": alt}}
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(fit))
    assert main(["set-combiners", str(bundle), "--ensemble", str(path)]) == 0
    spec = BundleSpec.read(bundle)
    assert spec.combiner("balanced") == (spec.combiners["balanced"], 1.3)
    assert spec.combiner("default") == (spec.ensemble, spec.temperature)
    crops = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    own = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu")
    chosen = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", combiner="balanced")
    probs = own.member_probs(crops)
    assert np.allclose(chosen.predict(crops), make_ensemble(alt, 2, 1.3)(probs), atol=1e-6)
    assert not np.allclose(chosen.predict(crops), own.predict(crops), atol=1e-4)
    with pytest.raises(BundleError, match="has no combiner 'nope' \\(it has: default, balanced\\)"):
        rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", combiner="nope")
    # a fit for other members (another default combiner) is refused, and the bundle keeps what it had
    other = {**fit, "ensemble": {"method": "soft_vote", "weights": [0.2, 0.8]}}
    path.write_text(json.dumps(other))
    assert main(["set-combiners", str(bundle), "--ensemble", str(path)]) != 0
    assert set(BundleSpec.read(bundle).combiners) == {"balanced"}
    with pytest.raises(RtferError, match="was not fitted on bundle"):
        from rtfer.training.bundling import set_combiners
        set_combiners(bundle, path)


def _write_run(folder, probs, labels, temperature=1.0):
    folder.mkdir(parents=True)
    np.savez(folder / "val_logits.npz", logits=np.log(np.clip(probs, 1e-9, None)) * temperature, labels=labels)
    (folder / "val.json").write_text(json.dumps({"temperature": temperature}))


def test_posterior_shift_of_an_existing_bundle_feeds_valence_everywhere(tiny_bundle, tmp_path, group_photo):
    import csv
    import shutil

    import cv2
    import pytest

    from rtfer.bundle import BundleSpec
    from rtfer.labels import valence
    from rtfer.pipeline import AnalyzeOptions
    from rtfer.run import process_file
    from rtfer.training.stacker import fit_posterior_shift

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    alt = {"method": "soft_vote", "weights": [0.3, 0.7], "temperature": 1.0, "fitted_as": "logistic_balanced"}
    meta["combiners"] = {"balanced": alt}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert BundleSpec.read(bundle).posterior_shift("balanced") is None
    # members' validation outputs that over-call sadness (index 4) on neutral faces (index 6)
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 600, p=[0.1, 0.02, 0.02, 0.3, 0.1, 0.06, 0.4])
    logits = rng.normal(0, 1, (600, 7))
    logits[np.arange(600), labels] += 2.5
    logits[:, 4] += 1.0
    member = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    runs = [tmp_path / "runs" / "ddamfn", tmp_path / "runs" / "convnext"]
    for r in runs:
        _write_run(r, member, labels, 1.2)
    assert main(["set-combiners", str(bundle), "--shift-from", *map(str, runs[::-1])]) != 0  # wrong order: refused
    assert main(["set-combiners", str(bundle), "--shift-from", *map(str, runs)]) == 0
    spec = BundleSpec.read(bundle)
    shift = spec.posterior_shift("balanced")
    want = fit_posterior_shift(make_ensemble(alt, 2, 1.0)([member, member]), labels)
    np.testing.assert_allclose(shift, want, atol=1e-9)
    assert shift[4] < -0.5 and abs(shift.mean()) < 1e-9  # sadness was over-called: the shift takes it back
    assert spec.posterior_shift("default") is None
    # the runtime computes valence through it: the CSV's valence is the shifted one, not P(pos) - P(neg) of the row
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), group_photo)
    rows = {}
    for combiner in ("default", "balanced"):
        out = tmp_path / f"{combiner}.csv"
        process_file(folder, out, AnalyzeOptions(bundle=str(bundle), backend="onnxruntime", device="cpu",
                                                 combiner=combiner))
        rows[combiner] = [r for r in csv.DictReader(out.open()) if r["face_id"]]
    from rtfer.labels import CLASSES

    for combiner, sh in (("default", None), ("balanced", shift)):
        assert rows[combiner]
        for r in rows[combiner]:
            p = np.array([float(r[c]) for c in CLASSES])
            assert float(r["valence"]) == pytest.approx(float(valence(p / p.sum(), sh)), abs=2e-4)
    p = np.array([[float(r[c]) for c in CLASSES] for r in rows["balanced"]])
    assert not np.allclose(valence(p, shift), valence(p), atol=1e-3)
    # a malformed shift is refused when bundle.json is read
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["combiners"]["balanced"]["posterior_shift"] = [0.0] * 6
    (bundle / "bundle.json").write_text(json.dumps(meta))
    from rtfer.errors import BundleError

    with pytest.raises(BundleError, match="posterior_shift must be 7 finite numbers"):
        BundleSpec.read(bundle)


def test_flip_combiner_reads_each_face_and_its_mirror(tiny_bundle, tiny_packed, tmp_path):
    import shutil

    import pytest

    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError
    from rtfer.training.bundling import set_flip_combiners

    _, val = tiny_packed
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    # the members' flip-TTA validation outputs, as the runtime computes them, then a fit on them
    assert main(["member-logits", str(bundle), str(val), "-o", str(tmp_path / "flip"), "--tta-flip"]) == 0
    runs = [tmp_path / "flip" / m for m in ("ddamfn", "convnext")]
    assert all(json.loads((r / "val.json").read_text())["tta_flip"] is True for r in runs)
    assert main(["fit-stacker", *map(str, runs), "-o", str(tmp_path / "ens"), "--folds", "2"]) == 0
    assert main(["set-combiners", str(bundle), "--flip", str(tmp_path / "ens" / "ensemble.json")]) == 0
    spec = BundleSpec.read(bundle)
    assert set(spec.combiners) == {"flip", "flip_balanced"}
    assert all(c["tta_flip"] is True for c in spec.combiners.values())
    fit = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    crops = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    own = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu")
    flip = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", combiner="flip")
    assert not own.tta_flip and flip.tta_flip
    # averaging two views' logits = averaging their log-probabilities (softmax is shift-invariant per row)
    views = [own.member_probs(crops), own.member_probs(np.ascontiguousarray(crops[:, :, ::-1]))]
    mixed = []
    for a, b in zip(*views):
        z = (np.log(a) + np.log(b)) / 2
        mixed.append(np.exp(z) / np.exp(z).sum(1, keepdims=True))
    want = make_ensemble(fit["ensemble"], 2, fit["temperature"])(mixed)
    assert np.allclose(flip.predict(crops), want, atol=1e-5)
    seen = []  # the mirror really is read: a second pass on the width-flipped batch
    infer = flip.backends[0].infer
    flip.backends[0].infer = lambda x: seen.append(x.copy()) or infer(x)
    flip.member_probs(crops)
    assert len(seen) == 2 and np.array_equal(seen[1], seen[0][..., ::-1])
    # a fit on plain (not flip) outputs is refused, and the bundle keeps its flip combiners
    assert main(["member-logits", str(bundle), str(val), "-o", str(tmp_path / "plain")]) == 0
    plain = [tmp_path / "plain" / m for m in ("ddamfn", "convnext")]
    assert main(["fit-stacker", *map(str, plain), "-o", str(tmp_path / "ens0"), "--folds", "2"]) == 0
    with pytest.raises(BundleError, match="not flip-TTA"):
        set_flip_combiners(bundle, tmp_path / "ens0" / "ensemble.json")
    assert set(BundleSpec.read(bundle).combiners) == {"flip", "flip_balanced"}
    # tta_flip must be a boolean
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["combiners"]["flip"]["tta_flip"] = "yes"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="tta_flip must be true or false"):
        BundleSpec.read(bundle)


def test_a_tilted_combiner_leans_to_rare_classes_and_keeps_valence(tiny_bundle, tiny_packed, tmp_path):
    """set-combiners --tilt: the base combiner's output with class_bias = -alpha * log(train class frequencies),
    written with its posterior shift; the runtime applies exactly that; plain outputs for a flip base are refused."""
    import shutil

    import pytest

    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError
    from rtfer.training.bundling import set_posterior_shifts, set_tilted_combiner
    from rtfer.training.data import load_split

    train, val = tiny_packed
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["member-logits", str(bundle), str(val), "-o", str(tmp_path / "plain")]) == 0
    runs = [str(tmp_path / "plain" / m) for m in ("ddamfn", "convnext")]
    assert main(["set-combiners", str(bundle), "--tilt", "default", "--runs", *runs]) == 2  # --train missing
    assert main(["set-combiners", str(bundle), "--tilt", "default", "--runs", *runs, "--train", str(train)]) == 0
    spec = BundleSpec.read(bundle)
    c = spec.combiners["tilted"]
    counts = np.bincount(load_split(train).labels, minlength=7).astype(float)
    want_bias = -c["tilt"]["alpha"] * np.log(counts / counts.sum())
    assert np.allclose(c["class_bias"], want_bias - want_bias.mean())
    assert c["tta_flip"] is False and len(c["posterior_shift"]) == 7 and c["metrics"]["cross_validated"] is True
    crops = np.random.default_rng(1).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    own = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu")
    tilted = rtfer.load_bundle(bundle, backend="onnxruntime", device="cpu", combiner="tilted")
    base = own.combine(own.member_probs(crops))
    z = np.log(base.astype(np.float64)) * spec.temperature + np.asarray(c["class_bias"])  # undo T, tilt, redo T
    want = np.exp((z - z.max(1, keepdims=True)) / spec.temperature)
    assert np.allclose(tilted.predict(crops), want / want.sum(1, keepdims=True), atol=1e-4)
    assert np.allclose(tilted.posterior_shift, c["posterior_shift"])
    # a flip base needs flip outputs; a tilted combiner is not tilted twice; a damaged bias is refused on read
    set_flip = {"flip": {**spec.ensemble, "temperature": spec.temperature, "tta_flip": True}}
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["combiners"].update(set_flip)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="holds plain outputs"):
        set_tilted_combiner(bundle, "flip", runs, train)
    with pytest.raises(BundleError, match="tilted already"):
        set_tilted_combiner(bundle, "tilted", runs, train)
    shifted = set_posterior_shifts(bundle, runs)  # plain outputs shift the plain combiners only, never a flip one
    assert "tilted" in shifted and "flip" not in shifted
    assert "posterior_shift" not in BundleSpec.read(bundle).combiners["flip"]
    meta["combiners"]["tilted"]["class_bias"] = [0.0] * 6
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="class_bias must be 7 finite numbers"):
        BundleSpec.read(bundle)


def test_prior_tilt_finds_a_rare_class_the_combiner_misses():
    """A combiner that under-calls a rare class: the tilt gets it back without losing more than max_drop."""
    from rtfer.training.stacker import fit_prior_tilt

    rng = np.random.default_rng(0)
    prior = np.array([0.3, 0.02, 0.02, 0.3, 0.12, 0.09, 0.15])
    labels = rng.choice(7, size=3000, p=prior)
    logits = rng.normal(0, 1.0, (3000, 7)) + 2.2 * np.eye(7)[labels] + np.log(prior)  # a prior-heavy classifier
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    alpha, m = fit_prior_tilt(probs, labels, prior, max_drop=0.002)
    assert alpha > 0
    assert m["mean_class_accuracy"] > m["untilted"]["mean_class_accuracy"] + 0.02
    tilted = (np.log(probs) - alpha * np.log(prior)).argmax(1)
    assert (tilted == labels).mean() >= m["untilted"]["accuracy"] - 0.002 - 1e-9
    assert len(m["fold_alphas"]) == 5 and set(m["recall"]) <= {"surprise", "fear", "disgust", "happiness", "sadness",
                                                               "anger", "neutral"}
