"""TF.js graph models read into PyTorch (training/tfjs_graph.py): a small hand-written graph whose every operation is
checked against a plain numpy implementation of TensorFlow's definitions (NHWC, SAME padding with the extra row and
column at the bottom and right, depthwise multipliers, quantised weights), then probed end to end."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rtfer.errors import InputError  # noqa: E402
from rtfer.training.tfjs_graph import build, read_tfjs  # noqa: E402


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _node(name, op, inputs=(), **attr):
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def _conv_attrs(stride, padding):
    return {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": _s(padding),
            "data_format": _s("NHWC"), "dilations": {"list": {"i": ["1", "1", "1", "1"]}}}


def _write_model(folder, nodes, weights, quant=None):
    """model.json + one shard; ``quant``: name -> "float16" | "uint8" (affine) for float weights."""
    specs, blobs = [], []
    for name, arr in weights.items():
        spec = {"name": name, "shape": list(arr.shape), "dtype": "int32" if arr.dtype.kind == "i" else "float32"}
        q = (quant or {}).get(name)
        if q == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(arr.astype(np.float16).tobytes())
        elif q == "uint8":
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
            blobs.append(np.round((arr - lo) / scale).astype(np.uint8).tobytes())
        else:
            blobs.append(arr.astype(np.int32 if arr.dtype.kind == "i" else np.float32).tobytes())
        specs.append(spec)
    (folder / "m.bin").write_bytes(b"".join(blobs))
    consts = [_node(n, "Const") for n in weights]
    meta = {"format": "graph-model", "modelTopology": {"node": consts + nodes},
            "weightsManifest": [{"paths": ["m.bin"], "weights": specs}]}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder / "model.json"


def _np_conv(x, w, stride, padding, depthwise=False):
    """TensorFlow's conv2d / depthwise_conv2d by its definition (NHWC; w [kh, kw, in, out|mult])."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    cout = c * w.shape[3] if depthwise else w.shape[3]
    y = np.zeros((n, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]  # n kh kw c
            if depthwise:
                y[:, i, j, :] = np.einsum("nabc,abcm->ncm", patch, w).reshape(n, -1)
            else:
                y[:, i, j, :] = np.einsum("nabc,abco->no", patch, w)
    return y


def test_a_small_graph_matches_tensorflows_definitions(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (4,)).astype(np.float32)
    dw = rng.normal(0, 0.3, (3, 3, 4, 2)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, (8,)).astype(np.float32)
    fc = rng.normal(0, 0.3, (8, 5)).astype(np.float32)
    fcb = rng.normal(0, 0.1, (5,)).astype(np.float32)
    weights = {"w1": w1, "b1": b1, "dw": dw, "scale": scale, "six": np.array(6.0, np.float32),
               "zero": np.array(0.0, np.float32), "axes": np.array([1, 2], np.int32), "fc": fc, "fcb": fcb,
               "pads": np.array([[0, 0], [1, 0], [0, 2], [0, 0]], np.int32)}
    nodes = [
        _node("in", "Placeholder"),
        _node("c1", "Conv2D", ["in", "w1"], **_conv_attrs(2, "SAME")),
        _node("c1b", "Add", ["c1", "b1"]),
        _node("r6a", "Minimum", ["c1b", "six"]),
        _node("r6", "Maximum", ["r6a", "zero"]),
        _node("pad", "Pad", ["r6", "pads"]),
        _node("d1", "DepthwiseConv2dNative", ["pad", "dw"], **_conv_attrs(2, "VALID")),
        _node("d1s", "Mul", ["d1", "scale"]),
        _node("gap", "Mean", ["d1s", "axes"], keep_dims={"b": False}),
        _node("logits", "_FusedMatMul", ["gap", "fc", "fcb"], fused_ops={"list": {"s": [
            base64.b64encode(b"BiasAdd").decode(), base64.b64encode(b"Relu").decode()]}}),
        _node("probs", "Softmax", ["logits"]),
    ]
    model = _write_model(tmp_path, nodes, weights, quant={"w1": "float16", "fc": "uint8"})
    _, read = read_tfjs(model)
    assert np.abs(read["w1"] - w1).max() < 2e-3 and np.abs(read["fc"] - fc).max() <= (fc.max() - fc.min()) / 255
    x = rng.uniform(0, 1, (2, 8, 7, 3)).astype(np.float32)  # odd width: SAME pads one more column on the right
    graph = build(model).eval()
    assert graph.outputs == ["probs"]
    with torch.no_grad():
        got = graph(torch.from_numpy(x), outputs=["c1", "d1s", "gap", "probs"])
    # the reference, from the weights as stored (quantised) and TensorFlow's definitions
    c1 = _np_conv(x, read["w1"], 2, "SAME")
    np.testing.assert_allclose(got["c1"].numpy(), c1, atol=1e-5)
    r6 = np.clip(c1 + b1, 0, 6)
    padded = np.pad(r6, ((0, 0), (1, 0), (0, 2), (0, 0)))
    d1s = _np_conv(padded, dw, 2, "VALID", depthwise=True) * scale
    np.testing.assert_allclose(got["d1s"].numpy(), d1s, atol=1e-5)
    logits = np.maximum(d1s.mean(axis=(1, 2)) @ read["fc"] + fcb, 0)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(got["probs"].numpy(), probs, atol=1e-6)
    # every float constant is a trainable parameter: the graph fine-tunes like any module
    loss = graph(torch.from_numpy(x))["probs"][:, 0].sum()
    loss.backward()
    assert all(p.grad is not None for p in graph.parameters())


def test_max_pool_never_takes_its_padding_as_the_maximum(tmp_path):
    """MaxPool (MediaPipe's face mesh) with SAME padding on an odd width of all-negative values: TensorFlow pads with
    nothing that can win, so the last column's maximum is its own value, not 0; then PReLU."""
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.1, 0.3, (3,)).astype(np.float32)
    pool = {"ksize": {"list": {"i": ["1", "2", "2", "1"]}}, "strides": {"list": {"i": ["1", "2", "2", "1"]}},
            "padding": _s("SAME"), "data_format": _s("NHWC")}
    nodes = [_node("in", "Placeholder"), _node("mp", "MaxPool", ["in"], **pool), _node("act", "Prelu", ["mp", "alpha"])]
    model = _write_model(tmp_path, nodes, {"alpha": alpha})
    x = -rng.uniform(0.5, 2, (2, 5, 7, 3)).astype(np.float32)
    with torch.no_grad():
        got = build(model).eval()(torch.from_numpy(x), outputs=["mp", "act"])
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)  # SAME: the extra row/col at the end
    mp = padded.reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4))
    assert got["mp"].shape == (2, 3, 4, 3) and (mp < 0).all()
    np.testing.assert_allclose(got["mp"].numpy(), mp, atol=0)
    np.testing.assert_allclose(got["act"].numpy(), mp * alpha, rtol=1e-6)


def test_unsupported_or_damaged_models_are_refused(tmp_path):
    model = _write_model(tmp_path, [_node("in", "Placeholder"), _node("f", "FFT", ["in"])], {})
    with pytest.raises(InputError, match="unsupported operations FFT"):
        read_tfjs(model)
    model = _write_model(tmp_path, [_node("in", "Placeholder"), _node("y", "Add", ["in", "b"])],
                         {"b": np.ones(3, np.float32)})
    (tmp_path / "m.bin").write_bytes(b"\0" * 16)  # 4 more bytes than the manifest describes
    with pytest.raises(InputError, match="manifest describes 12"):
        read_tfjs(model)
    with pytest.raises(InputError, match="does not exist"):
        read_tfjs(tmp_path / "none.json")


def test_probe_of_a_tfjs_graph_writes_its_table(tmp_path, tiny_packed):
    from rtfer.training.__main__ import main

    rng = np.random.default_rng(1)
    weights = {"w": rng.normal(0, 0.5, (3, 3, 3, 6)).astype(np.float32)}
    nodes = [_node("in", "Placeholder"), _node("c", "Conv2D", ["in", "w"], **_conv_attrs(2, "SAME")),
             _node("r", "Relu", ["c"])]
    model = _write_model(tmp_path, nodes, weights)
    train, val = tiny_packed
    out = tmp_path / "probe"
    assert main(["probe", str(model), "--nodes", "c", "r", "--sizes", "24", "--input-scales", "1/255,0", "1,-128",
                 "--train", str(train), "--val", str(val), "-o", str(out), "--threads", "1"]) == 0
    rows = json.loads((out / "probe.json").read_text())
    assert {(r["features"], r["backbone"].split("(")[1]) for r in rows} == {
        (f, s) for f in ("c", "r", "all") for s in ("x*0.003922+0)", "x*1-128)")}
    assert all(0 <= r["accuracy"] <= 1 and r["dims"] in (6, 12) for r in rows)
    assert main(["probe", str(model), "--train", str(train), "--val", str(val), "-o", str(out)]) == 2  # no --nodes
    assert main(["probe", str(model), "--nodes", "nope", "--train", str(train), "--val", str(val), "-o",
                 str(out)]) == 2
