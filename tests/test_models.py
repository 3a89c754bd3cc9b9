"""Model registry, tiny variants' forward/backward, DDAMFN size and reference key compatibility."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from rtfer.labels import CLASSES, DDAMFN_REFERENCE_ORDER  # noqa: E402
from rtfer.models import create_model, inference_state_keys, list_models, register_model  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, thread spinning makes these tiny models many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def read_reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / "ddamfn_reference_keys.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split()
        rows.append((name, () if shape == "scalar" else tuple(int(v) for v in shape.split(","))))
    return rows


def test_import_rtfer_does_not_import_models():
    import subprocess

    code = "import rtfer, sys; assert 'rtfer.models' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_round_trip():
    names = list_models()
    for name in ("ddamfn", "ddamfn_tiny", "convnextv2_test", "convnextv2_tiny", "convnextv2_atto"):
        assert name in names
    assert list_models("ddamfn*") == ["ddamfn", "ddamfn_fer", "ddamfn_tiny"]
    assert "convnextv2_fer" in names
    for name in ("smallcnn", "widercnn", "resnet18_cbam_attn", "resnet18_cbam_attn_fer"):  # the earlier systems
        assert name in names

    @register_model
    def _test_linear_net(num_classes: int = 7, width: int = 4):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
        net.default_cfg = {"input_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "color": "rgb"}
        return net

    m = create_model("_test_linear_net", num_classes=3, width=5)
    assert m.architecture == "_test_linear_net" and m.arch_kwargs == {"width": 5}
    assert m(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="did you mean ddamfn"):
        create_model("ddamnf")
    m = create_model("ddamfn_tiny", input_size=64, pretrained=False)
    assert m.arch_kwargs == {"input_size": 64}  # weight-choice flags are not part of the architecture


@pytest.mark.parametrize("name,size", [("ddamfn_tiny", 112), ("ddamfn_tiny", 64), ("convnextv2_test", 64)])
def test_tiny_forward_backward(name, size):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, input_size=size)
    assert m.default_cfg["input_size"] == size and m.default_cfg["color"] == "rgb"
    assert sum(p.numel() for p in m.parameters()) < 100_000
    x = torch.randn(3, 3, size, size)
    m.train()
    logits = m(x)
    assert logits.shape == (3, 7)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n in set(inference_state_keys(m)))
    m.eval()
    with torch.no_grad():
        assert m(x[:1]).shape == (1, 7)


def test_ddamfn_forward_train_exposes_head_maps():
    m = create_model("ddamfn_tiny", num_head=3, input_size=64).eval()
    with torch.no_grad():
        out = m.forward_train(torch.randn(2, 3, 64, 64))
        logits = m(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 7) and logits.shape == (2, 7)
    assert len(out["attention"]) == 3
    assert all(a.shape == (2, 64, 4, 4) for a in out["attention"])  # 64 px -> 4x4 maps
    assert all(float(a.min()) >= 0 and float(a.max()) <= 1 for a in out["attention"])  # product of sigmoids
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("ddamfn_tiny", input_size=100)


def test_fer_members_keep_a_real_map_at_48px():
    """The CPU members: DDAMFN's head sees a 6x6 map at 48 px (not the stock 3x3), ConvNeXt-V2 ends at 3x3."""
    d = create_model("ddamfn_fer").eval()
    assert d.default_cfg["input_size"] == 48
    with torch.no_grad():
        out = d.forward_train(torch.randn(2, 3, 48, 48))
    assert out["features"].shape[-2:] == (6, 6) and all(a.shape[-2:] == (6, 6) for a in out["attention"])
    assert d.Linear.conv.weight.shape[-2:] == (6, 6)
    assert sum(p.numel() for p in d.parameters()) < 1.5e6
    c = create_model("convnextv2_fer").eval()
    assert [type(m).__name__ for m in c.stem][:3] == ["Conv2d", "GELU", "Conv2d"]  # overlapping conv stem
    assert c.stem[0].kernel_size == (3, 3) and c.stem[0].stride == (2, 2)
    with torch.no_grad():
        assert c.forward_features(torch.randn(2, 3, 48, 48)).shape[-2:] == (3, 3)
        assert c(torch.randn(2, 3, 48, 48)).shape == (2, 7)
    assert any(type(m).__name__ == "GlobalResponseNorm" for m in c.modules())  # a ConvNeXt-V2 block
    for name in ("ddamfn_fer", "convnextv2_fer"):
        with pytest.raises(RuntimeError, match="no pretrained"):
            create_model(name, pretrained=True)
    with pytest.raises(ValueError, match="strides"):
        create_model("ddamfn_fer", strides=(2, 3, 2, 2))
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("ddamfn_fer", input_size=44)


def test_resnet18_cbam_attn_keeps_a_2x2_patch_grid():
    for name, size, grid in (("resnet18_cbam_attn", 224, 4), ("resnet18_cbam_attn_fer", 48, 3)):
        m = create_model(name).eval()
        assert m.default_cfg["input_size"] == size
        with torch.no_grad():
            f = m.backbone(torch.randn(1, 3, size, size))
            assert f.shape[1:] == (256, 14 if size == 224 else 12, 14 if size == 224 else 12)
            assert m.patches(m.cbam(f)).shape[-1] == grid  # then pooled to the 2x2 grid of four tokens
            assert m(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_ddamfn_parameter_count_and_reference_keys():
    m = create_model("ddamfn")
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 4.19e6) / 4.19e6 < 0.02, n
    ours = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert ours == read_reference_keys()
    # a smaller input keeps the key set, only the full-map depthwise kernels shrink
    small = {k: tuple(v.shape) for k, v in create_model("ddamfn", input_size=64).state_dict().items()}
    assert small.keys() == dict(ours).keys()
    assert small["Linear.conv.weight"] == (512, 1, 4, 4)
    assert small["cat_head0.CoordAtt.Linear_h.conv.weight"] == (512, 1, 1, 4)


def test_inference_keys_skip_unused_reference_modules():
    m = create_model("ddamfn_tiny")
    keys = inference_state_keys(m)
    assert "fc.weight" in keys and "features.0.conv.weight" in keys
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert "bn.weight" not in keys  # BatchNorm1d over the logits: carried by the reference, never applied
    assert not any(".conv_dw.bn." in k or ".conv_dw.prelu." in k for k in keys)
    assert not any(".CoordAtt.Linear." in k for k in keys)
    assert len(inference_state_keys(create_model("convnextv2_test"))) == len(
        create_model("convnextv2_test").state_dict())


def test_convnext_offline_pretrained_message(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="--pretrained-path.*--no-pretrained"):
        create_model("convnextv2_atto", pretrained=True)
    with pytest.raises(FileNotFoundError):
        create_model("convnextv2_atto", pretrained_path="/nonexistent/weights.pth")
    with pytest.raises(RuntimeError, match="--pretrained-path"):
        create_model("ddamfn_tiny", pretrained=True)


def test_reference_checkpoint_class_rows_are_remapped(tmp_path):
    from rtfer.training.reference import load_reference_ddamfn

    torch.manual_seed(1)
    ref = create_model("ddamfn_tiny").eval()  # same key layout as the reference (checked above), cheap to run
    state = ref.state_dict()
    state["fc.bias"] = torch.arange(7, dtype=torch.float32)  # row i = reference class i
    ref.load_state_dict(state)
    ckpt = tmp_path / "rafdb_ref.pth"
    torch.save({"iter": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    ours = load_reference_ddamfn(ckpt, architecture="ddamfn_tiny")
    expected = [DDAMFN_REFERENCE_ORDER.index(c) for c in CLASSES]
    assert ours.state_dict()["fc.bias"].tolist() == expected
    assert torch.equal(ours.state_dict()["fc.weight"], state["fc.weight"][expected])
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), ref(x)[:, expected].numpy(), atol=1e-5)
    # a plain state dict works too
    torch.save(state, tmp_path / "plain.pth")
    assert load_reference_ddamfn(tmp_path / "plain.pth", architecture="ddamfn_tiny").state_dict()["fc.bias"].tolist() == expected


def test_mfn_pretrained_from_pickled_reference_module(tmp_path):
    """MFN_msceleb.pth is a pickled networks.MixedFeatureNet.MixedFeatureNet module; load it without that code."""
    import types

    from rtfer.training.reference import load_mfn_pretrained

    target = create_model("ddamfn_tiny")
    names = ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5", "conv_6_sep")
    mod = types.ModuleType("networks.MixedFeatureNet")

    class MixedFeatureNet(torch.nn.Module):
        pass

    MixedFeatureNet.__module__ = "networks.MixedFeatureNet"
    MixedFeatureNet.__qualname__ = "MixedFeatureNet"
    mod.MixedFeatureNet = MixedFeatureNet
    pkg = types.ModuleType("networks")
    pkg.MixedFeatureNet = mod
    source = create_model("ddamfn_tiny")
    mfn = MixedFeatureNet()
    for i, name in enumerate(names):
        mfn.add_module(name, source.features[i])
    mfn.add_module("linear", torch.nn.Linear(64, 16, bias=False))  # the embedding tail DDAMFN drops
    sys.modules.update({"networks": pkg, "networks.MixedFeatureNet": mod})
    try:
        torch.save(mfn, tmp_path / "MFN_msceleb.pth")
    finally:
        del sys.modules["networks"], sys.modules["networks.MixedFeatureNet"]
    # unpickling runs code from the file: refused unless the user says they trust it
    with pytest.raises(ValueError, match="trust"):
        load_mfn_pretrained(target, tmp_path / "MFN_msceleb.pth")
    with pytest.raises(ValueError, match="trust"):
        create_model("ddamfn_tiny", pretrained_path=tmp_path / "MFN_msceleb.pth")  # the runtime never unpickles
    report = load_mfn_pretrained(target, tmp_path / "MFN_msceleb.pth", trust_pickle=True)
    assert report == {"missing": [], "unexpected": ["linear.weight"]}
    for k, v in source.features.state_dict().items():
        assert torch.equal(target.features.state_dict()[k], v), k
    wrong = create_model("ddamfn_tiny")
    torch.save({"conv1.conv.weight": torch.zeros(5, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_mfn_pretrained(wrong, tmp_path / "bad.pth")


def test_runtime_model_code_never_unpickles():
    """The unpickling fallback lives in training/ behind a trust flag; nothing under rtfer/ calls it."""
    import rtfer

    root = Path(rtfer.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_bundle_from_reference_checkpoint(tmp_path):
    import rtfer
    from rtfer.training.reference import bundle_from_reference

    torch.manual_seed(2)
    ref = create_model("ddamfn_tiny").eval()
    state = ref.state_dict()
    state["fc.bias"] = torch.arange(7, dtype=torch.float32) * 3  # reference class i gets logit bias 3i
    torch.save({"model_state_dict": state}, tmp_path / "ref.pth")
    folder = bundle_from_reference(tmp_path / "ref.pth", tmp_path / "bundle", architecture="ddamfn_tiny")
    bundle = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu")
    assert [m.architecture for m in bundle.members] == ["ddamfn_tiny"]
    probs = bundle.predict(np.full((2, 112, 112, 3), 128, np.uint8))
    # the reference's last class (angry) carries the largest bias: canonical "anger" must win
    assert [CLASSES[i] for i in probs.argmax(1)] == ["anger", "anger"]
