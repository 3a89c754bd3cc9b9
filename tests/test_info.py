"""`rtfer info`: readable tables with every section, and complete JSON for machines."""
from __future__ import annotations

import json
import re

from rtfer.bundle import BundleSpec, resolve_bundle_path
from rtfer.cli import main


def test_info_tables_name_every_section(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for heading in ("bundle default", "members", "provenance", "ensemble", "validation", "ablation", "detector",
                    "backends", "devices", "auto choice"):
        assert heading in out, heading
    assert "ddamfn" in out and "faceres29" in out and "onnxruntime" in out and "cpu" in out
    acc = BundleSpec.read(resolve_bundle_path("default")).raw["metrics"]["ensemble"]["accuracy"]
    assert f"{acc:.1%}" in out  # the ensemble's validation accuracy, read from bundle.json
    balanced = BundleSpec.read(resolve_bundle_path("default")).combiners["balanced"]["metrics"]
    assert re.search(rf"\n  balanced +logistic_balanced +{balanced['accuracy']:.1%} .* 1x\n", out)  # the --combiner table
    flip = BundleSpec.read(resolve_bundle_path("default")).combiners["flip"]["metrics"]
    assert re.search(rf"\n  flip +soft_vote +{flip['accuracy']:.1%} .* 2x \(face \+ mirror\)\n", out)


def test_info_names_another_builtin_bundle(capsys):
    assert main(["info", "--bundle", "fast"]) == 0
    out = capsys.readouterr().out
    assert "bundle fast" in out and "faceres29" in out and "resnet18_cbam_attn" not in out
    assert "dlib_face_recognition_resnet_model_v1" in out and "CC0-1.0" in out  # its provenance


def test_info_json_is_complete(capsys):
    assert main(["info", "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text)  # the whole document parses: nothing is cut
    names = ["default", "balanced", "flip", "flip_balanced", "tilted", "flip_tilted"]
    assert [c["name"] for c in info["combiners"]] == names
    assert [c["tta_flip"] for c in info["combiners"]] == [False, False, True, True, False, True]
    assert {"bundle", "members", "ensemble", "validation", "ablation", "detector", "sdks", "onnxruntime_providers",
            "devices", "auto_choice"} <= info.keys()
    assert [m["name"] for m in info["members"]] == ["ddamfn", "faceres29"]
    raw = {m["name"]: m for m in BundleSpec.read(resolve_bundle_path("default")).raw["members"]}
    for m in info["members"]:  # provenance, as bundle.json records it
        for key in ("pretrained_from", "weights_license", "training_data"):
            assert m[key] == raw[m["name"]][key]
    assert info["ensemble"]["accuracy"] > 0.5 and len(info["ensemble"]["recall"]) == 7
    assert info["validation"]["count"] > 0 and info["ablation"]
    assert info["devices"][0]["device"] == "cpu" and info["auto_choice"]["backend"]
