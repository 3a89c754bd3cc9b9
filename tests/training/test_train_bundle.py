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
