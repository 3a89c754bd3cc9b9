"""ONNX export, FP16 weight storage, ORT-vs-torch parity and bundle writing, on tiny registered models."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("timm")

from rtfer.models import create_model, inference_state_keys  # noqa: E402
from rtfer.training.export import check_parity, export_onnx, fp16_weights, write_bundle  # noqa: E402

#: Face boxes (x1, y1, x2, y2) in insightface's t1.jpg group photo, found once with the CenterFace detector.
GROUP_PHOTO_FACES = ((60, 269, 168, 394), (746, 345, 847, 480), (1135, 270, 1226, 395), (464, 267, 572, 412),
                     (274, 155, 371, 268), (903, 61, 1010, 204))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def face_crops(group_photo) -> np.ndarray:
    """The six real faces of the group photo as square 112x112 RGB uint8 crops."""
    import cv2

    crops = []
    for x1, y1, x2, y2 in GROUP_PHOTO_FACES:
        cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) * 0.6)
        crop = group_photo[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half]
        crops.append(cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)[..., ::-1])
    return np.ascontiguousarray(np.stack(crops))


def nontrivial(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and a larger classifier, so logits are O(1-10) like a trained model's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("fc.weight"):
                p.mul_(40.0)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {"ddamfn_tiny": nontrivial(create_model("ddamfn_tiny")),
            "convnextv2_test": nontrivial(create_model("convnextv2_test", input_size=64), seed=1)}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(m, out / f"{name}.onnx") for name, m in models.items()}


@pytest.mark.parametrize("name", ["ddamfn_tiny", "convnextv2_test"])
def test_export_names_axes_and_weights(name, models, exported):
    proto = onnx.load(str(exported[name]))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, *(2 * [
        models[name].default_cfg["input_size"]])]
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    has_bn = any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert has_bn == (name == "ddamfn_tiny")  # BN stays a node (ConvNeXt has none), never folded into Conv
    # every weight forward uses is an initializer under its state_dict name, with its values (no BN folding)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    keys = inference_state_keys(models[name])
    assert sorted(inits) == sorted(keys)
    state = models[name].state_dict()
    for k in keys:
        np.testing.assert_array_equal(inits[k], state[k].numpy(), err_msg=k)


@pytest.mark.parametrize("name", ["ddamfn_tiny", "convnextv2_test"])
def test_parity_fp32_and_fp16_weights(name, models, exported, face_crops, tmp_path):
    model = models[name]
    p32 = check_parity(model, exported[name], face_crops)
    assert p32["n"] == 6 and p32["max_abs_logit"] > 1.0  # real crops, logits of a realistic scale
    assert p32["max_abs_diff"] < 1e-4 and p32["top1_agreement"] == 1.0

    half = fp16_weights(exported[name], tmp_path / "half.onnx")
    assert half.stat().st_size < 0.75 * exported[name].stat().st_size
    proto = onnx.load(str(half))
    onnx.checker.check_model(proto, full_check=True)
    names = {i.name for i in proto.graph.initializer}
    assert names == set(inference_state_keys(model))
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert sum(n.op_type == "Cast" for n in proto.graph.node) == len(names)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # the graph stays FP32
    p16 = check_parity(model, half, face_crops)
    assert 0 < p16["max_abs_diff"] < 2e-2 and p16["top1_agreement"] >= 5 / 6


def test_parity_check_detects_a_different_model(models, exported):
    other = nontrivial(create_model("ddamfn_tiny"), seed=7)
    p = check_parity(other, exported["ddamfn_tiny"])
    assert p["max_abs_diff"] > 1e-2 and p["n"] == 0


def test_bundle_round_trip_both_backends(models, exported, face_crops, tmp_path):
    import rtfer

    folder = write_bundle(
        tmp_path / "bundle",
        [{"model": models["ddamfn_tiny"], "name": "ddamfn", "temperature": 1.5, "onnx": exported["ddamfn_tiny"]},
         {"model": models["convnextv2_test"], "name": "convnext", "onnx": exported["convnextv2_test"]}],
        {"method": "soft_vote", "weights": [0.6, 0.4]}, name="tiny-test", version="0.0.1", interim=True,
        training={"data": "none (test)"}, metrics={"val_acc": 0.5}, parity_images=face_crops)
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["interim"] is True and meta["name"] == "tiny-test"
    ddam, conv = meta["members"]
    assert (ddam["architecture"], ddam["input_size"], ddam["file"]) == ("ddamfn_tiny", 112, "ddamfn.onnx")
    assert (conv["architecture"], conv["input_size"], conv["arch_kwargs"]) == ("convnextv2_test", 64, {"input_size": 64})
    assert ddam["temperature"] == 1.5 and len(ddam["sha256"]) == 64
    assert ddam["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert set(meta["metrics"]["export_parity"]) == {"ddamfn", "convnext"} and meta["metrics"]["val_acc"] == 0.5
    assert np.asarray(meta["alignment"]["template"]).shape == (5, 2)

    probs = {}
    for backend in ("onnxruntime", "torch"):
        bundle = rtfer.load_bundle(folder, backend=backend, device="cpu")
        probs[backend] = bundle.predict(face_crops)
    assert probs["torch"].shape == (6, 7)
    np.testing.assert_allclose(probs["torch"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs["torch"], probs["onnxruntime"], atol=1e-5)
    # and the bundle's ensemble matches the torch models it came from (FP16-stored weights)
    from rtfer.ensemble import softmax

    with torch.no_grad():
        x112 = torch.from_numpy(((face_crops / 255.0 - np.array([0.485, 0.456, 0.406])) /
                                 np.array([0.229, 0.224, 0.225])).transpose(0, 3, 1, 2).astype(np.float32))
        x64 = torch.nn.functional.interpolate(x112, size=64, mode="area")
        p1 = softmax(models["ddamfn_tiny"](x112).numpy(), 1.5)
        p2 = softmax(models["convnextv2_test"](x64).numpy())
    expected = 0.6 * p1 + 0.4 * p2
    assert np.abs(probs["torch"] - expected).max() < 0.05  # resize differences (cv2 vs torch area) dominate


def test_member_flip_tta_averages_the_mirror_images_logits(tmp_path, tiny_bundle):
    import json
    import shutil

    import rtfer
    from rtfer.bundle import preprocess
    from rtfer.ensemble import softmax

    folder = tmp_path / "tta"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["members"][0]["tta_flip"] = True
    (folder / "bundle.json").write_text(json.dumps(meta))
    bundle = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu")
    assert bundle.members[0].tta_flip and not bundle.members[1].tta_flip
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    m, b = bundle.members[0], bundle.backends[0]
    x = preprocess(crops, m)
    want = softmax((b.infer(x) + b.infer(np.ascontiguousarray(x[..., ::-1]))) / 2, m.temperature)
    calls = []
    infer = b.infer
    b.infer = lambda batch: calls.append(batch.copy()) or infer(batch)
    got = bundle.member_probs(crops)[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(calls) == 2 and np.array_equal(calls[1], x[..., ::-1])  # the second pass sees the mirror image


@pytest.mark.parametrize("name,size,published", [("smallcnn", 64, 390e3), ("widercnn", 64, 764e3),
                                                 ("resnet18_cbam_attn_fer", 48, None)])
def test_earlier_systems_networks_train_export_and_run_in_a_bundle(tmp_path, face_crops, group_video, name, size,
                                                                   published):
    """System B's CNNs and system C's ResNet-18 + CBAM + attention: registry, one step, ONNX parity, a bundle that
    `rtfer analyze` runs (no code path assumes DDAMFN or ConvNeXt)."""
    import csv

    from rtfer.cli import main

    torch.manual_seed(0)
    model = create_model(name, input_size=size)
    n = sum(p.numel() for p in model.parameters())
    if published:
        assert abs(n - published) / published < 0.01, n
    assert model.default_cfg["input_size"] == size
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    parity = check_parity(model, path, face_crops)
    assert parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 1.0
    folder = write_bundle(tmp_path / "bundle", [{"model": model, "name": name, "onnx": path}],
                          {"method": "soft_vote", "weights": [1.0]}, name="baseline", version="0", interim=True)
    out = tmp_path / "o.csv"
    assert main(["analyze", str(group_video), "-o", str(out), "--bundle", str(folder), "--backend", "onnxruntime",
                 "--device", "cpu", "--no-progress", "-q"]) == 0
    with open(out, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["emotion"]]
    assert rows and all(abs(sum(float(r[c]) for c in ("surprise", "fear", "disgust", "happiness", "sadness",
                                                          "anger", "neutral")) - 1) < 1e-3 for r in rows)


def _prelu_graph(slope: np.ndarray, fp16: bool) -> "onnx.ModelProto":
    """x (2, C, 5, 5) -> PRelu(x, slope) with the slope a (C,) weight reshaped to (C, 1, 1), stored FP32 or (as
    fp16_weights writes it) FP16 behind a Cast."""
    from onnx import TensorProto, helper, numpy_helper

    c = len(slope)
    w = numpy_helper.from_array(slope.astype(np.float16 if fp16 else np.float32), "prelu.weight")
    shape = numpy_helper.from_array(np.array([c, 1, 1], np.int64), "shape")
    nodes = [helper.make_node("Cast", ["prelu.weight"], ["w32"], to=TensorProto.FLOAT)] if fp16 else []
    nodes += [helper.make_node("Reshape", ["w32" if fp16 else "prelu.weight", "shape"], ["a"]),
              helper.make_node("PRelu", ["x", "a"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 5, 5])], [w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("fp16", [False, True])
def test_prelu_as_max_is_exact_for_slopes_up_to_one(fp16):
    import onnxruntime as ort

    from rtfer.training.export import prelu_as_max

    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x})[0]
    proto = _prelu_graph(np.array([-0.3, 0.0, 0.5, 1.0]), fp16)
    before = run(proto)
    assert prelu_as_max(proto) == 1
    assert [n.op_type for n in proto.graph.node if n.op_type in ("PRelu", "Mul", "Max")] == ["Mul", "Max"]
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_array_equal(run(proto), before)
    steep = _prelu_graph(np.array([0.2, 1.5, 0.1, 0.3]), fp16)  # a slope above 1: max(x, a*x) would differ
    assert prelu_as_max(steep) == 0 and any(n.op_type == "PRelu" for n in steep.graph.node)


def test_export_rewrites_ddamfn_prelu(exported):
    ops = [n.op_type for n in onnx.load(str(exported["ddamfn_tiny"])).graph.node]
    assert "PRelu" not in ops and ops.count("Max") >= 1  # parity of this file: test_parity_fp32_and_fp16_weights


def test_rewrite_graphs_upgrades_an_older_bundle_in_place(models, face_crops, tmp_path, monkeypatch, capsys):
    import rtfer
    from rtfer.bundle import BundleSpec
    from rtfer.training import export
    from rtfer.training.__main__ import main

    with monkeypatch.context() as patch:  # a bundle as export wrote it before the rewrite existed
        patch.setattr(export, "prelu_as_max", lambda proto: 0)
        folder = write_bundle(tmp_path / "old", [{"model": models["ddamfn_tiny"], "name": "ddamfn"}],
                              {"method": "soft_vote", "weights": [1.0]}, name="old", version="0", interim=True)
    file = folder / "ddamfn.onnx"
    assert any(n.op_type == "PRelu" for n in onnx.load(str(file)).graph.node)
    before_sha = BundleSpec.read(folder).members[0].sha256
    before = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").predict(face_crops)

    assert main(["rewrite-graphs", str(folder)]) == 0
    assert "ddamfn: " in capsys.readouterr().out
    spec = BundleSpec.read(folder)
    spec.verify()
    assert spec.members[0].sha256 != before_sha and "prelu_as_max" in spec.raw["graph_rewrites"]
    assert not any(n.op_type == "PRelu" for n in onnx.load(str(file)).graph.node)
    after = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").predict(face_crops)
    np.testing.assert_allclose(after, before, atol=1e-6)
    torch_probs = rtfer.load_bundle(folder, backend="torch", device="cpu").predict(face_crops)
    np.testing.assert_allclose(torch_probs, after, atol=1e-5)  # the torch backend still rebuilds it from the file
    assert main(["rewrite-graphs", str(tmp_path / "missing")]) == 2
