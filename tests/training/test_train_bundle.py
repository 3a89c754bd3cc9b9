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
                 "--data-note", "synthetic"]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["interim"] is True and [m["name"] for m in meta["members"]] == ["ddamfn", "convnext"]
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
