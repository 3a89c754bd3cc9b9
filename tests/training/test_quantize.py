"""INT8 static quantisation of bundle members (python -m rtfer.training quantize) and --precision at run time."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import synthetic_split

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quantized(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with INT8 members (QDQ), calibrated and measured on a small synthetic split."""
    from rtfer.training.quantize import quantize_bundle

    tmp = tmp_path_factory.mktemp("quant")
    folder = tmp / "bundle"
    shutil.copytree(tiny_bundle, folder)
    val = tmp / "val.npz"
    np.savez_compressed(val, **synthetic_split(3, 1, size=48))
    # every member INT8: with per_member the tiny members' timings (noise at this size) could keep one in FP
    record = quantize_bundle(folder, val, fmt="qdq", calib_count=8, max_drop=100.0, min_seconds=0.05,
                             per_member=False)
    return folder, record, val


def test_quantize_adds_int8_members_and_records_fp_vs_int8(quantized):
    from rtfer.bundle import BundleSpec, sha256_file

    folder, record, _ = quantized
    spec = BundleSpec.read(folder)
    spec.verify()
    for m in spec.members:
        assert (folder / m.file).is_file()  # the FP files stay
        assert m.int8["file"].endswith(".int8.onnx") and (folder / m.int8["file"]).is_file()
        assert m.int8["sha256"] == sha256_file(folder / m.int8["file"])
        assert m.int8["from_sha256"] == m.sha256
    q = spec.int8
    assert q["accepted"] is True and q["format"] == "QDQ"
    assert set(q["val"]["fp"]["members"]) == {m.name for m in spec.members}
    assert 0.0 <= q["val"]["int8"]["ensemble"]["accuracy"] <= 1.0 and q["val"]["count"] == 21
    assert set(q["cost_ms_per_face"]["int8"]) == {*(m.name for m in spec.members), "ensemble"}
    assert spec.int8_status() == (True, True, "")
    assert record == q


def test_int8_bundle_predicts_close_to_fp(quantized):
    import rtfer

    folder, _, _ = quantized
    crops = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    fp = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu", precision="fp32")
    q = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu", precision="int8")
    assert fp.precision == "fp32" and q.precision == "int8"
    assert q.backends[0].active_device == "cpu (int8)" and q.backends[0].model_path.name.endswith(".int8.onnx")
    p = q.predict(crops)
    assert p.shape == (5, 7) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.abs(p - fp.predict(crops)).max() < 0.2


def test_auto_precision_takes_accepted_int8_only_on_cpu_onnxruntime(quantized, tmp_path):
    import rtfer
    from rtfer.bundle import BUNDLE_FILE
    from rtfer.errors import BackendError

    folder, _, _ = quantized
    assert rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").precision == "int8"
    assert rtfer.load_bundle(folder, backend="torch", device="cpu").precision == "fp32"
    with pytest.raises(BackendError, match="onnxruntime on the CPU only"):
        rtfer.load_bundle(folder, backend="torch", device="cpu", precision="int8")
    rejected = tmp_path / "rejected"
    shutil.copytree(folder, rejected)
    meta = json.loads((rejected / BUNDLE_FILE).read_text())
    meta["quantization"]["int8"]["accepted"] = False
    (rejected / BUNDLE_FILE).write_text(json.dumps(meta))
    assert rtfer.load_bundle(rejected, backend="onnxruntime", device="cpu").precision == "fp32"
    assert rtfer.load_bundle(rejected, backend="onnxruntime", device="cpu", precision="int8").precision == "int8"


def test_stale_int8_file_is_not_used(quantized, tmp_path):
    import rtfer
    from rtfer.bundle import BUNDLE_FILE
    from rtfer.errors import BundleError

    folder, _, _ = quantized
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)
    meta = json.loads((stale / BUNDLE_FILE).read_text())
    meta["members"][0]["int8"]["from_sha256"] = "0" * 64  # made from another version of the FP member
    (stale / BUNDLE_FILE).write_text(json.dumps(meta))
    assert rtfer.load_bundle(stale, backend="onnxruntime", device="cpu").precision == "fp32"
    with pytest.raises(BundleError, match="stale"):
        rtfer.load_bundle(stale, backend="onnxruntime", device="cpu", precision="int8")


def test_cli_precision_and_info(quantized, tiny_bundle, tmp_path, capsys):
    from rtfer.cli import main

    folder, _, _ = quantized
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    assert main(["analyze", str(image), "--bundle", str(tiny_bundle), "--precision", "int8", "-q",
                 "-o", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable INT8 members" in err
    assert main(["info", "--bundle", str(folder), "--backend", "onnxruntime", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "int8 members" in out and "accepted" in out and "QDQ" in out and "precision int8" in out


def test_quantize_command_bad_input_is_one_line(tiny_bundle, tmp_path, capsys):
    from rtfer.training.__main__ import main

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    assert main(["quantize", str(folder), "--calib", str(tmp_path / "missing.npz")]) == 2
    assert "neither a packed .npz nor an image-class folder" in capsys.readouterr().err


def test_fp32_graph_restores_fp32_weights(tiny_bundle, tmp_path):
    import onnx
    import onnxruntime as ort

    from rtfer.bundle import BundleSpec, preprocess
    from rtfer.training.quantize import fp32_graph

    spec = BundleSpec.read(tiny_bundle)
    m = spec.members[0]
    out = fp32_graph(tiny_bundle / m.file, tmp_path / "fp32.onnx")
    proto = onnx.load(str(out))
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    x = preprocess(np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8), m)
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    assert np.allclose(run(out), run(tiny_bundle / m.file), atol=1e-4)


def test_int8_pays_keeps_fp_where_int8_is_not_faster():
    from rtfer.training.quantize import int8_pays

    fp = {"a": 5.0, "b": 2.0, "c": 10.0}
    assert int8_pays(["a", "b", "c"], fp, {"a": 5.4, "b": 1.5, "c": 9.8}) == (False, True, False)  # c: < 5% faster
    assert int8_pays(["a", "b", "c"], fp, {"a": 4.0, "b": 1.0, "c": 3.9}) == (True, True, True)


def test_member_where_int8_does_not_pay_keeps_its_fp_file(tiny_bundle, tmp_path, monkeypatch):
    """quantize measures the mixed set; the member it keeps in FP runs its FP file (and FP backend) under int8."""
    import rtfer
    from rtfer.bundle import BundleSpec
    from rtfer.training import quantize

    def fake_cost(spec, files, threads=1, min_seconds=1.0):  # INT8 pays for the second member only
        cost = {m.name: (3.0 if k == 0 else 1.0) if ".qdq." in f.name else 2.0
                for k, (m, f) in enumerate(zip(spec.members, files))}
        return {**cost, "ensemble": sum(cost.values())}

    monkeypatch.setattr(quantize, "cost_files", fake_cost)
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    val = tmp_path / "val.npz"
    np.savez_compressed(val, **synthetic_split(3, 1, size=48))
    record = quantize.quantize_bundle(folder, val, fmt="qdq", calib_count=8, max_drop=100.0, min_seconds=0.05)
    first, second = BundleSpec.read(folder).members
    assert [c["format"] for c in record["candidates"]] == ["qdq", "qdq+fp"]
    assert record["members"] == {first.name: "fp (int8 not faster)", second.name: "int8"}
    assert record["cost_ms_per_face"]["int8"]["ensemble"] == 3.0  # the cheaper, mixed set was kept
    assert first.int8 == {"file": first.file, "from_sha256": first.sha256, "sha256": first.sha256, "kept_fp": True}
    assert second.int8["file"].endswith(".int8.onnx") and (folder / second.int8["file"]).is_file()
    assert not (folder / f"{first.file[:-5]}.int8.onnx").exists()

    b = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu", precision="int8")
    assert b.precision == "int8" and [x.model_path.name for x in b.backends] == [first.file, second.int8["file"]]
    assert [x.active_device for x in b.backends] == ["cpu", "cpu (int8)"]
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    fp = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu", precision="fp32")
    assert np.allclose(b.member_probs(crops)[0], fp.member_probs(crops)[0], atol=1e-6)
