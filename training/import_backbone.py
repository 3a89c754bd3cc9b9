"""Import face-pretrained backbones into rtfer's PyTorch networks (``python -m rtfer.training import-backbone``).

``dlib``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``, CC0, in the PyPI package
``face_recognition_models`` or from dlib's model site). The file is dlib's own serialisation of the network
(``dlib::serialize(net)``), read here without dlib:

- integers: one byte whose low 4 bits give the number of little-endian bytes that follow (bit 7: negative);
- strings: an integer length, then the bytes; floats outside tensors: integer mantissa then integer exponent;
- tensors: version 2, then num_samples, k, nr, nc, then that many little-endian float32 values;
- layers are written input side first, each as its type string (``con_4``, ``affine_``, ``max_pool_2``,
  ``avg_pool_2``, ``fc_2``, ...) followed by its parameters.

The reader walks the file in that order, takes every convolution, affine and fully connected layer with its
geometry (filters, kernel, stride, padding) and checks them one by one against :class:`FaceResNet` before a single
tensor is copied, so a different network is refused, never half-loaded. The output is a plain tensor dict
(``torch.load(weights_only=True)`` reads it) with the trunk, the 128-D embedding and the provenance.
"""
from __future__ import annotations

import hashlib
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_PROVENANCE = {
    "pretrained_from": "dlib_face_recognition_resnet_model_v1 (dlib face-recognition ResNet-29, 150 px, "
                       "128-D identity embedding)",
    "weights_license": "CC0-1.0 (Davis King, dlib-models)",
    "training_data": "face identity: about 3 million faces of about 7,485 people (FaceScrub, VGGFace and "
                     "web-scraped images), per dlib's model card",
}


class DlibFormatError(InputError):
    """The file is not a dlib network of the expected kind."""


@dataclass
class DlibLayer:
    kind: str  # "con", "affine", "fc", "max_pool", "avg_pool", "input"
    params: np.ndarray | None = None
    geometry: dict = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes):
        self.b = data
        self.p = 0

    def int(self) -> int:
        if self.p >= len(self.b):
            raise DlibFormatError("unexpected end of file")
        head = self.b[self.p]
        n, neg = head & 0x0F, bool(head & 0x80)
        if n > 8 or self.p + 1 + n > len(self.b):
            raise DlibFormatError(f"bad integer at byte {self.p}")
        v = int.from_bytes(self.b[self.p + 1:self.p + 1 + n], "little")
        self.p += 1 + n
        return -v if neg else v

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.p} (expected 2)")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        end = self.p + 4 * count
        if count <= 0 or end > len(self.b):
            raise DlibFormatError(f"tensor of {shape} runs past the end of the file")
        arr = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.p).astype(np.float32).reshape(shape)
        self.p = end
        return arr


#: The layer type strings this reader understands (dlib layer serialisation versions).
_NAMES = {b"con_4": "con", b"con_5": "con", b"affine_": "affine", b"fc_2": "fc", b"max_pool_2": "max_pool",
          b"avg_pool_2": "avg_pool", b"input_rgb_image_sized": "input"}


#: A serialised layer name: dlib's one-byte length prefix (size byte 1, then the length), then the name.
_NAME_RE = re.compile(b"|".join(re.escape(bytes([1, len(n)]) + n) for n in _NAMES))


def read_dlib_net(path: str | Path) -> list[DlibLayer]:
    """The parameter-carrying layers of a serialised dlib network, input side first."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x01\x01\x01\x0dloss_metric_"):
        raise DlibFormatError(f"{path} is not a dlib metric-learning network (dlib_face_recognition_resnet_model)")
    layers: list[DlibLayer] = []
    pos = 0
    while (hit := _NAME_RE.search(data, pos)) is not None:
        r = _Reader(data)
        r.p = hit.end()
        kind = _NAMES[hit.group()[2:]]
        if kind == "input":
            mean = [r.float() for _ in range(3)]
            layers.append(DlibLayer(kind, geometry={"mean_rgb": mean, "size": (r.int(), r.int())}))
        elif kind == "con":
            params = r.tensor()
            g = dict(zip(("filters", "kh", "kw", "stride_y", "stride_x", "pad_y", "pad_x"),
                         (r.int() for _ in range(7))))
            layers.append(DlibLayer(kind, params.ravel(), g))
        elif kind == "affine":
            layers.append(DlibLayer(kind, r.tensor().ravel()))
        elif kind == "fc":
            outputs, inputs = r.int(), r.int()
            params = r.tensor()
            layers.append(DlibLayer(kind, params.reshape(-1, outputs), {"outputs": outputs, "inputs": inputs}))
        else:
            g = dict(zip(("kh", "kw", "stride_y", "stride_x", "pad_y", "pad_x"), (r.int() for _ in range(6))))
            layers.append(DlibLayer(kind, geometry=g))
        pos = r.p
    return layers


def dlib_state_dicts(layers: list[DlibLayer], model) -> tuple[dict, dict]:
    """Map dlib layers onto ``model`` (a ``FaceResEmbed``): (trunk state_dict, fc state_dict), checked shapes."""
    import torch
    from torch import nn

    from rtfer.models.faceres import Affine, Block

    convs = [m for m in layers if m.kind == "con"]
    affines = [m for m in layers if m.kind == "affine"]
    fcs = [m for m in layers if m.kind == "fc"]
    # The trunk's conv/affine modules in forward order (dlib writes a block's conv1, aff1, conv2, aff2 in order).
    targets: list[tuple[str, nn.Module]] = []
    trunk = model.trunk
    targets += [("conv1", trunk.conv1), ("aff1", trunk.aff1)]
    for si, stage in enumerate(trunk.stages):
        for bi, block in enumerate(stage):
            assert isinstance(block, Block)
            for n in ("conv1", "aff1", "conv2", "aff2"):
                targets.append((f"stages.{si}.{bi}.{n}", getattr(block, n)))
    t_convs = [(n, m) for n, m in targets if isinstance(m, nn.Conv2d)]
    t_affs = [(n, m) for n, m in targets if isinstance(m, Affine)]
    if len(convs) != len(t_convs) or len(affines) != len(t_affs) or len(fcs) != 1:
        raise DlibFormatError(f"the file has {len(convs)} convolutions, {len(affines)} affine and {len(fcs)} fc "
                              f"layers; the dlib face ResNet has {len(t_convs)}, {len(t_affs)} and 1")
    sd: dict[str, torch.Tensor] = {}
    for (name, conv), layer in zip(t_convs, convs):
        g = layer.geometry
        want = (conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        got = (g["filters"], (g["kh"], g["kw"]), (g["stride_y"], g["stride_x"]), (g["pad_y"], g["pad_x"]))
        if want != got:
            raise DlibFormatError(f"{name}: the file's convolution is {got}, the network's {want}")
        n_w = conv.weight.numel()
        if layer.params.size != n_w + conv.out_channels:
            raise DlibFormatError(f"{name}: {layer.params.size} values for {n_w} weights + {conv.out_channels} biases")
        sd[f"{name}.weight"] = torch.from_numpy(layer.params[:n_w].reshape(conv.weight.shape).copy())
        sd[f"{name}.bias"] = torch.from_numpy(layer.params[n_w:].copy())
    for (name, aff), layer in zip(t_affs, affines):
        c = aff.weight.numel()
        if layer.params.size != 2 * c:
            raise DlibFormatError(f"{name}: {layer.params.size} affine values for {c} channels")
        sd[f"{name}.weight"] = torch.from_numpy(layer.params[:c].copy())
        sd[f"{name}.bias"] = torch.from_numpy(layer.params[c:].copy())
    fc = fcs[0]
    if tuple(fc.params.shape) != (model.fc.in_features, model.fc.out_features):
        raise DlibFormatError(f"fc: the file's weights are {tuple(fc.params.shape)}, the network's "
                              f"{(model.fc.in_features, model.fc.out_features)}")
    return sd, {"weight": torch.from_numpy(fc.params.T.copy())}


def find_dlib_model() -> Path | None:
    """The model file inside an installed ``face_recognition_models`` package, if there is one."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "models" / DLIB_FILE
        if p.is_file():
            return p
    return None


def import_dlib(source: str | Path | None, out: str | Path) -> dict:
    """Convert dlib's face-recognition ResNet to ``out`` (a tensor dict); returns a summary."""
    import torch

    from rtfer.models import create_model

    if not source:
        source = find_dlib_model()
        if source is None:
            raise InputError(f"no {DLIB_FILE} given and the face_recognition_models package is not installed "
                             f"(pip install face_recognition_models, or pass the .dat file)")
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source} does not exist")
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists; choose another -o or remove it")
    layers = read_dlib_net(source)
    inp = next((m for m in layers if m.kind == "input"), None)
    model = create_model("faceres29_embed", num_classes=128)
    trunk_sd, fc_sd = dlib_state_dicts(layers, model)
    model.trunk.load_state_dict(trunk_sd, strict=True)
    model.fc.load_state_dict(fc_sd, strict=True)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    provenance = {**DLIB_PROVENANCE, "source_file": source.name, "source_sha256": digest}
    if inp is not None:
        provenance["input"] = {"mean_rgb": [round(v, 4) for v in inp.geometry["mean_rgb"]],
                               "size": list(inp.geometry["size"])}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    torch.save({"trunk": trunk_sd, "embed": fc_sd, "provenance": provenance}, tmp)
    tmp.replace(out)
    n = sum(t.numel() for t in trunk_sd.values()) + sum(t.numel() for t in fc_sd.values())
    log.info("imported %s (%d layers, %.2f M parameters, sha256 %s) -> %s", source.name, len(layers), n / 1e6,
             digest[:12], out)
    return {"out": str(out), "parameters": n, "layers": len(layers), "provenance": provenance}


# -- writing dlib's format (tests build small networks in it; also documents the format) -------------------------

def _pack_int(v: int) -> bytes:
    neg, v = v < 0, abs(int(v))
    body = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if neg else 0)]) + body


def _pack_str(s: bytes) -> bytes:
    return _pack_int(len(s)) + s


def _pack_tensor(a: np.ndarray, shape: tuple[int, int, int, int]) -> bytes:
    return _pack_int(2) + b"".join(_pack_int(d) for d in shape) + np.asarray(a, "<f4").tobytes()


def _pack_float(x: float) -> bytes:
    m, e = np.frexp(np.float64(x))
    mant = int(m * (1 << 52))
    return _pack_int(mant) + _pack_int(int(e) - 52)


def write_dlib_net(model, path: str | Path, mean_rgb=(122.782, 117.001, 104.298)) -> None:
    """Serialise a ``FaceResEmbed`` the way dlib lays out its layers (used by tests to check the reader)."""
    from torch import nn

    from rtfer.models.faceres import Affine

    chunks = [b"\x01\x01" + _pack_str(b"loss_metric_2") + _pack_float(0.04) + _pack_float(0.6)]
    chunks.append(_pack_str(b"input_rgb_image_sized") + b"".join(_pack_float(v) for v in mean_rgb)
                  + _pack_int(150) + _pack_int(150))
    for name, m in model.trunk.named_modules():
        if isinstance(m, nn.Conv2d):
            params = np.concatenate([m.weight.detach().numpy().ravel(), m.bias.detach().numpy().ravel()])
            chunks.append(_pack_str(b"con_4") + _pack_tensor(params, (params.size, 1, 1, 1))
                          + b"".join(_pack_int(v) for v in (m.out_channels, *m.kernel_size, *m.stride, *m.padding)))
        elif isinstance(m, Affine):
            params = np.concatenate([m.weight.detach().numpy(), m.bias.detach().numpy()])
            chunks.append(_pack_str(b"affine_") + _pack_tensor(params, (params.size, 1, 1, 1)) + _pack_int(1))
            if name == "aff1":
                chunks.append(_pack_str(b"max_pool_2") + b"".join(_pack_int(v) for v in (3, 3, 2, 2, 0, 0)))
    w = model.fc.weight.detach().numpy().T  # inputs x outputs
    chunks.append(_pack_str(b"avg_pool_2") + b"".join(_pack_int(v) for v in (0, 0, 1, 1, 0, 0)))
    chunks.append(_pack_str(b"fc_2") + _pack_int(w.shape[1]) + _pack_int(w.shape[0])
                  + _pack_tensor(w, (w.shape[0], w.shape[1], 1, 1)) + struct.pack("<4B", 1, 0, 1, 0))
    Path(path).write_bytes(b"".join(chunks))
