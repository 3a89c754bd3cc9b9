"""The torch backend: bucketing helpers, rebuilding from ONNX weights, agreement with onnxruntime, device errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rtfer.backends import create_backend  # noqa: E402
from rtfer.backends.torch import bucket_for, bucket_sizes, pad_batch, parse_device, plan_batches  # noqa: E402
from rtfer.errors import BackendError  # noqa: E402
from rtfer.models import create_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- bucketing (pure functions) ------------------------------------------------------------------------------------

def test_bucket_sizes_and_lookup():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert [bucket_for(n, bucket_sizes(12)) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
    with pytest.raises(ValueError):
        bucket_for(13, bucket_sizes(12))
    with pytest.raises(ValueError):
        bucket_sizes(0)


def test_pad_and_plan():
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    padded = pad_batch(x, 4)
    assert padded.shape == (4, 2) and np.array_equal(padded[:3], x) and not padded[3].any()
    assert pad_batch(x, 3) is x
    with pytest.raises(ValueError):
        pad_batch(x, 2)
    assert plan_batches(0, 8) == []
    assert plan_batches(3, 8) == [(0, 3, 4)]
    assert plan_batches(19, 8) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]


def test_parse_device():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("gpu") == ("cuda", 0)  # the one device parser's alias
    for bad in ("cuda:x", "cpu:1", "tensorrt"):
        with pytest.raises(BackendError, match="unknown device"):
            parse_device(bad)


# ---- rebuilding from an exported bundle ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A one-member bundle (ddamfn_tiny at 64 px, random BN statistics) written by
    rtfer.training.export.write_bundle."""
    from rtfer.training.export import write_bundle

    torch.manual_seed(0)
    model = create_model("ddamfn_tiny", input_size=64).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        model.fc.weight.mul_(40)
    folder = write_bundle(tmp_path_factory.mktemp("b") / "tiny", [{"model": model, "name": "ddamfn"}],
                          {"method": "soft_vote", "weights": [1.0]}, name="tiny", version="1", interim=True)
    member = json.loads((folder / "bundle.json").read_text())["members"][0]
    return {"folder": folder, "member": member, "model": model, "file": folder / member["file"]}


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_torch_backend_matches_onnxruntime(bundle):
    tb = create_backend("torch", bundle["file"], device="cpu", member=bundle["member"], max_batch=4)
    ob = create_backend("onnxruntime", bundle["file"], device="cpu", member=bundle["member"], max_batch=4)
    assert tb.describe() == "torch on cpu (fp32)"
    x = _batch(6)  # more than max_batch: chunked
    a, b = tb.infer(x), ob.infer(x)
    assert a.shape == (6, 7) and a.dtype == np.float32
    assert np.abs(b).max() > 1.0
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert tb.infer(x[:0]).shape == (0, 7)
    tb.warmup((1, 2))
    # the rebuilt module holds the FP16-rounded weights of the original
    w = tb.model.state_dict()["fc.weight"]
    assert torch.equal(w, bundle["model"].state_dict()["fc.weight"].half().float())


def _rewrite(src, dst, edit):
    proto = onnx.load(str(src))
    edit(proto.graph)
    onnx.save(proto, str(dst))
    return dst


def test_missing_or_extra_weight_is_named(bundle, tmp_path):
    def rename(graph):
        for init in graph.initializer:
            if init.name == "fc.weight":
                init.name = "head.fc.weight"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == "fc.weight":
                    node.input[i] = "head.fc.weight"

    def add(graph):
        graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "bogus.weight"))

    missing = _rewrite(bundle["file"], tmp_path / "missing.onnx", rename)
    with pytest.raises(BackendError, match="lacks the weight fc.weight"):
        create_backend("torch", missing, device="cpu", member=bundle["member"])
    extra = _rewrite(bundle["file"], tmp_path / "extra.onnx", add)
    with pytest.raises(BackendError, match="bogus.weight"):
        create_backend("torch", extra, device="cpu", member=bundle["member"])
    wrong_arch = dict(bundle["member"], arch_kwargs={"input_size": 64, "num_head": 3})
    with pytest.raises(BackendError, match="cat_head2"):
        create_backend("torch", bundle["file"], device="cpu", member=wrong_arch)
    with pytest.raises(BackendError, match="not a registered model"):
        create_backend("torch", bundle["file"], device="cpu", member=dict(bundle["member"], architecture="resnet9"))


def test_missing_cuda_device_raises(bundle, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="cuda:0 is not available"):
        create_backend("torch", bundle["file"], device="cuda:0", member=bundle["member"])
    b = create_backend("torch", bundle["file"], device="cuda", member=bundle["member"], allow_fallback=True)
    assert b.active_device.startswith("cpu") and b.infer(_batch(2)).shape == (2, 7)


def test_bundle_loads_on_torch_backend(bundle, tmp_path):
    import rtfer

    folder = shutil.copytree(bundle["folder"], tmp_path / "copy")
    faces = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    p_torch = rtfer.load_bundle(folder, backend="torch", device="cpu").predict(faces)
    p_ort = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").predict(faces)
    np.testing.assert_allclose(p_torch, p_ort, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_buckets_match_cpu(bundle):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = create_backend("torch", bundle["file"], device="cpu", member=bundle["member"], max_batch=8)
    gpu = create_backend("torch", bundle["file"], device="cuda:0", member=bundle["member"], max_batch=8)
    assert gpu.active_device.startswith("cuda:0")
    for n, seed in ((1, 0), (3, 1), (5, 2), (3, 3), (11, 4), (8, 5)):
        x = _batch(n, seed)
        ref, got = cpu.infer(x), gpu.infer(x)
        assert got.shape == (n, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=5e-2 * max(1.0, float(np.abs(ref).max())))
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8
    assert sorted(gpu._graphs) == [1, 4, 8]  # 1, 3->4, 5->8, 11 -> 8 + 3->4
    assert gpu.infer(_batch(0)).shape == (0, 7)
