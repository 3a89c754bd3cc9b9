"""ONNX export, FP16 weight storage, ORT-vs-torch parity checks and bundle writing.

Exports keep every weight as an initializer named after its state_dict key (no Conv+BN folding, no deduplication),
so that the torch backend can rebuild the module from the ONNX file alone; ``export_onnx`` verifies this.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from rtfer.bundle import ARCFACE_TEMPLATE, BUNDLE_FILE, MemberSpec, preprocess, write_bundle_json
from rtfer.errors import BundleError
from rtfer.models import default_cfg, inference_state_keys

log = logging.getLogger(__name__)

#: The torch.export-based ONNX exporter emits opset 18 and newer (ONNX's converter cannot take its Split to 17).
DEFAULT_OPSET = 18
#: fp32 values beyond this are kept in fp32 by fp16_weights (they would overflow).
FP16_MAX = 65504.0


# ---- export --------------------------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path: str | Path, input_size: int | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (eval mode, FP32, on CPU) to ``path``: input "input" (batch, 3, S, S), output "logits"
    (batch, C), dynamic axis "batch"; ``onnx.checker``; initializer names == the weights forward uses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = int(input_size or default_cfg(model)["input_size"])
    if opset < 18:
        log.warning("export_onnx: the torch exporter emits opset >= 18; using 18 instead of %d", opset)
        opset = 18
    m = copy.deepcopy(model).float().cpu().eval()
    keys = inference_state_keys(m, size)
    x = torch.randn(2, 3, size, size)
    prog = _torch_export(m, x, opset)
    proto = None
    try:
        _optimize_keeping_weights(prog.model, set(keys))
        proto = prog.model_proto
        if sorted(i.name for i in proto.graph.initializer if i.name in set(keys)) != sorted(keys):
            raise RuntimeError("the optimiser renamed or folded weights")
    except Exception as exc:  # onnxscript internals vary between versions; an unoptimised graph is still correct
        log.warning("export_onnx: graph optimisation skipped (%s); ONNX Runtime optimises at load time", exc)
        proto = _torch_export(m, x, opset).model_proto
    _constants_to_nodes(proto, set(keys))
    prelu_as_max(proto)
    for node in proto.graph.node:  # exporter debug records (stack traces with local paths): not for shipping
        del node.metadata_props[:]
        node.doc_string = ""
    proto.producer_name = "rtfer.training.export"
    onnx.checker.check_model(proto, full_check=True)
    names = [i.name for i in proto.graph.initializer]
    if sorted(names) != sorted(keys):
        extra = sorted(set(names) - set(keys))
        missing = sorted(set(keys) - set(names))
        raise RuntimeError(f"ONNX initializers differ from the state_dict keys: missing {missing[:3]}, extra {extra[:3]}")
    onnx.save(proto, str(path))
    log.info("exported %s: %d weights, opset %d, input %dx%d", path.name, len(names), opset, size, size)
    return path


def _torch_export(model: nn.Module, x: torch.Tensor, opset: int):
    """torch.export-based ONNX export without optimisation; its progress lines go to the debug log, not stdout."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        prog = torch.onnx.export(model, (x,), None, dynamo=True, optimize=False, opset_version=opset,
                                 input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
                                 verbose=False)
    for line in buf.getvalue().splitlines():
        log.debug("%s", line)
    return prog


def _optimize_keeping_weights(model, weights: set[str]) -> None:
    """onnxscript's optimiser minus the rewrites that fold or drop weights (BN fusion, zero-bias removal) and minus
    initializer deduplication, and never constant-folding a node that reads a weight."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding
    from onnxscript.rewriter import _fuse_batchnorm, _remove_optional_bias

    banned = set(_fuse_batchnorm.rules) | set(_remove_optional_bias.rules)
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r not in banned]

    def should_fold(node) -> bool | None:
        return False if any(v is not None and v.name in weights for v in node.inputs) else None

    ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager([
            _constant_folding.FoldConstantsPass(
                shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT, should_fold=should_fold),
            rewriter.RewritePass(rules),
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ], steps=2, early_stop=True),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.NameFixPass(),
    )(model)


def _constants_to_nodes(proto: onnx.ModelProto, weights: set[str]) -> None:
    """Turn non-weight initializers (shape constants) into Constant nodes so initializers are exactly the weights."""
    graph = proto.graph
    consts = [init for init in graph.initializer if init.name not in weights]
    if not consts:
        return
    nodes = [helper.make_node("Constant", [], [init.name], value=init, name=f"const_{init.name}") for init in consts]
    keep = [init for init in graph.initializer if init.name in weights]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)


def _weight_value(name: str, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto]):
    """The constant value behind ``name``: an initializer, possibly through Cast/Reshape/Identity/(Un)Squeeze nodes
    (which do not change the values); None when it is computed from anything else."""
    for _ in range(8):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is None or node.op_type not in ("Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze"):
            return None
        name = node.input[0]
    return None


def prelu_as_max(proto: onnx.ModelProto) -> int:
    """Rewrite ``PRelu(x, a)`` as ``Max(x, Mul(x, a))`` wherever every slope is <= 1 (there the two are equal:
    for x > 0, a*x <= x; for x < 0, a*x >= x; negative slopes included). ONNX Runtime's CPU PRelu is a slow
    generic broadcast kernel, about 15 times a Relu over the same tensor and a third of DDAMFN's time; the Mul + Max
    pair costs about 2.5 Relus. The weights and their names stay as they are. Returns how many nodes were rewritten."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes, done = [], 0
    for node in graph.node:
        slope = _weight_value(node.input[1], producers, inits) if node.op_type == "PRelu" else None
        if slope is None or not slope.size or float(np.max(slope)) > 1.0:
            nodes.append(node)
            continue
        scaled = f"{node.output[0]}__scaled"
        base = node.name or node.output[0]
        nodes += [helper.make_node("Mul", [node.input[0], node.input[1]], [scaled], name=f"{base}_mul"),
                  helper.make_node("Max", [node.input[0], scaled], [node.output[0]], name=f"{base}_max")]
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
        log.debug("prelu_as_max: %d PRelu nodes -> Max(x, a*x)", done)
    return done


def rewrite_bundle_graphs(folder: str | Path, atol: float = 1e-5) -> dict[str, int]:
    """Apply export's graph rewrites (:func:`prelu_as_max`) to the FP member files of an existing bundle, in place.

    Each rewritten member must give the same logits as before on random inputs (``atol``), or nothing is written.
    The weights are untouched; the files' sha256 change, so INT8 files made from the old files become stale (run
    ``quantize`` again). bundle.json records ``graph_rewrites``. Returns {member: PRelu nodes rewritten}."""
    import onnxruntime as ort

    from rtfer.bundle import BundleSpec

    folder = Path(folder)
    spec = BundleSpec.read(folder)
    spec.verify()
    counts: dict[str, int] = {}
    rewritten: dict[str, onnx.ModelProto] = {}
    for m in spec.members:
        proto = onnx.load(str(folder / m.file))
        counts[m.name] = prelu_as_max(proto)
        if not counts[m.name]:
            continue
        x = np.random.default_rng(0).standard_normal((4, 3, m.input_size, m.input_size)).astype(np.float32)
        run = lambda model: ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(  # noqa: E731
            None, {"input": x})[0]
        diff = float(np.abs(run(str(folder / m.file)) - run(proto.SerializeToString())).max())
        if diff > atol:
            raise BundleError(f"rewriting {m.file} changed its logits by {diff:.2g} (> {atol}); bundle left as it was")
        rewritten[m.file] = proto
    if rewritten:
        for file, proto in rewritten.items():
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(folder / file))
        meta = spec.raw  # bundle.json as read above; write_bundle_json re-hashes the members and re-reads it
        meta["graph_rewrites"] = {"prelu_as_max": {k: v for k, v in counts.items() if v}}
        write_bundle_json(folder, meta)
    log.info("%s: PRelu -> Max(x, a*x) in %s", folder, ", ".join(f"{k} ({v})" for k, v in counts.items()))
    return counts


# ---- FP16 weight storage ---------------------------------------------------------------------------------------------

def fp16_weights(onnx_in: str | Path, onnx_out: str | Path) -> Path:
    """Store FP32 initializers as FP16 (same names) followed by Cast-to-FP32 nodes: half the file, an FP32 graph.

    ONNX Runtime constant-folds the casts at load (FP32 speed on CPU); TensorRT still builds FP16 engines from it.
    """
    proto = onnx.load(str(onnx_in))
    graph = proto.graph
    casts, renamed = [], {}
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size and float(np.abs(arr).max()) > FP16_MAX:
            log.warning("fp16_weights: %s exceeds the FP16 range; kept in FP32", init.name)
            continue
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
        fp32_name = f"{init.name}__fp32"
        renamed[init.name] = fp32_name
        casts.append(helper.make_node("Cast", [init.name], [fp32_name], to=onnx.TensorProto.FLOAT,
                                      name=f"cast_{init.name}"))
    for node in graph.node:
        _rename_inputs(node, renamed)
    for out in graph.output:
        if out.name in renamed:
            raise BundleError(f"fp16_weights: graph output {out.name} is a weight")
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + old)
    infos = [vi for vi in graph.value_info if vi.name not in renamed]  # stale FP32 type records of the weights
    del graph.value_info[:]
    graph.value_info.extend(infos)
    onnx.checker.check_model(proto, full_check=True)
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(onnx_out))
    log.info("fp16 weights: %s (%d tensors cast, %.1f MB -> %.1f MB)", onnx_out.name, len(casts),
             Path(onnx_in).stat().st_size / 1e6, onnx_out.stat().st_size / 1e6)
    return onnx_out


def _rename_inputs(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        if name in renamed:
            node.input[i] = renamed[name]
    for attr in node.attribute:  # subgraphs (If/Loop) read outer-scope weights by name
        if attr.type == onnx.AttributeProto.GRAPH:
            for sub in attr.g.node:
                _rename_inputs(sub, renamed)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                for sub in g.node:
                    _rename_inputs(sub, renamed)


# ---- parity ------------------------------------------------------------------------------------------------------------

def _as_input(model: nn.Module, images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, S, S, 3) RGB crops -> preprocessed float32 NCHW (as the runtime does); float NCHW passes through."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        cfg = default_cfg(model)
        spec = MemberSpec(name="parity", file="", architecture="", input_size=size, mean=tuple(cfg["mean"]),
                          std=tuple(cfg["std"]), color=cfg.get("color", "rgb"))
        return preprocess(images, spec)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"parity images must be uint8 (n, S, S, 3) RGB crops or float (n, 3, S, S), got {images.shape}")
    return np.ascontiguousarray(images, np.float32)


def check_parity(model: nn.Module, onnx_path: str | Path, images: np.ndarray | None = None, *,
                 n_random: int = 4, seed: int = 0) -> dict:
    """Compare ONNX Runtime (CPU) with torch FP32 eager on ``images`` (real crops) and on random input.

    Returns max_abs_diff (over both), top1_agreement (on the real images, or random when none), n (real images),
    random_max_abs_diff and max_abs_logit (the scale of the logits, to judge the difference against).
    """
    import onnxruntime as ort

    m = copy.deepcopy(model).float().cpu().eval()
    size = int(default_cfg(m)["input_size"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("RTFER_ORT_THREADS", "0"))
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    rand = rng.standard_normal((n_random, 3, size, size)).astype(np.float32)
    sets = {"random": rand}
    if images is not None and len(images):
        sets["real"] = _as_input(m, images, size)
    result: dict = {}
    for key, x in sets.items():
        with torch.inference_mode():
            ref = m(torch.from_numpy(x)).numpy()
        got = sess.run(["logits"], {"input": x})[0]
        result[key] = (float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean()), len(x),
                       float(np.abs(ref).max()))
    main = result.get("real", result["random"])
    return {"max_abs_diff": max(r[0] for r in result.values()), "top1_agreement": main[1],
            "n": result["real"][2] if "real" in result else 0, "random_max_abs_diff": result["random"][0],
            "max_abs_logit": max(r[3] for r in result.values())}


# ---- bundles -------------------------------------------------------------------------------------------------------

def write_bundle(folder: str | Path, members: list[dict], ensemble: dict, *, name: str, version: str, interim: bool,
                 alignment_template=None, training: dict | None = None, metrics: dict | None = None,
                 parity_images: np.ndarray | None = None, temperature: float = 1.0, parity_tol: float = 2e-2,
                 opset: int = DEFAULT_OPSET, alignment: dict | None = None) -> Path:
    """Export each member (FP16-stored weights), write bundle.json, and check the bundle loads and agrees on the
    onnxruntime and torch backends.

    ``members``: dicts with ``model`` (nn.Module), ``name``, and optionally ``architecture``/``arch_kwargs`` (default:
    what create_model recorded on the module), ``temperature``, and ``onnx``: an FP32 file that export_onnx already
    wrote for this model (skips exporting again; the parity check still compares it with the model). ``parity_images``: real aligned crops (uint8
    (n, S, S, 3) RGB) for the ORT-vs-torch check; random input is always checked. A member whose FP16 export differs
    from torch by more than ``parity_tol`` x max(1, logit scale) raises BundleError. ``alignment``: extra fields
    for bundle.json's ``alignment`` object, above all ``detector``, the detector whose landmarks the template was
    fitted to (the runtime's ``--detector auto`` then uses it). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not members:
        raise BundleError("a bundle needs at least one member")
    specs, parity = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for member in members:
            model: nn.Module = member["model"]
            mname = str(member["name"])
            arch = member.get("architecture") or getattr(model, "architecture", None)
            if not arch:
                raise BundleError(f"member {mname}: no architecture given and the model was not built by create_model")
            arch_kwargs = dict(member.get("arch_kwargs", getattr(model, "arch_kwargs", {})))
            cfg = default_cfg(model)
            size = int(cfg["input_size"])
            fp32 = Path(member["onnx"]) if member.get("onnx") else \
                export_onnx(model, Path(tmp) / f"{mname}.fp32.onnx", size, opset=opset)
            file = f"{mname}.onnx"
            fp16_weights(fp32, folder / file)
            p = check_parity(model, folder / file, parity_images)
            parity[mname] = p
            log.info("member %s: fp16-weight ONNX vs torch max |diff| %.2e (logit scale %.1f), top-1 agreement %.3f "
                     "on %d real images", mname, p["max_abs_diff"], p["max_abs_logit"], p["top1_agreement"], p["n"])
            if p["max_abs_diff"] > parity_tol * max(1.0, p["max_abs_logit"]):
                raise BundleError(f"member {mname}: ONNX output differs from torch by {p['max_abs_diff']:.3g}")
            specs.append(MemberSpec(name=mname, file=file, architecture=arch, input_size=size,
                                    mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                                    color=cfg.get("color", "rgb"), arch_kwargs=arch_kwargs,
                                    temperature=float(member.get("temperature", 1.0)),
                                    tta_flip=bool(member.get("tta_flip", False)),
                                    **member_provenance(member, model)).to_dict())
    template = np.asarray(ARCFACE_TEMPLATE if alignment_template is None else alignment_template, np.float64)
    meta = {"name": name, "version": str(version), "interim": bool(interim), "members": specs,
            "ensemble": dict(ensemble), "temperature": float(temperature),
            "alignment": {"template": template.reshape(5, 2).tolist(), **dict(alignment or {})},
            "training": dict(training or {}), "metrics": {**dict(metrics or {}), "export_parity": parity}}
    write_bundle_json(folder, meta)
    check_bundle_roundtrip(folder, parity_images)
    return folder


#: What a member trained here from scratch on FER+ records (``member_provenance``'s default).
FER_PLUS_DATA = "FER2013 training images (Kaggle ICML 2013) with FER+ crowd labels (Microsoft, MIT licence)"
OWN_WEIGHTS_LICENSE = "MIT (rtfer; trained by the project)"


def member_provenance(member: dict, model) -> dict:
    """bundle.json provenance of a member: given explicitly, else the model's own record. A model built on a
    pretrained backbone records the backbone (``pretrained_from`` != "none"), whose licence and data are named
    beside the project's; a from-scratch member's record is taken as it is."""
    given = dict(member.get("provenance") or {})
    pre = dict(getattr(model, "provenance", {}) or {})
    pretrained = given.get("pretrained_from") or pre.get("pretrained_from") or "none"
    if pretrained == "none":
        return {"pretrained_from": "none",
                "weights_license": given.get("weights_license") or pre.get("weights_license") or OWN_WEIGHTS_LICENSE,
                "training_data": given.get("training_data") or pre.get("training_data") or FER_PLUS_DATA}
    data = given.get("training_data") or (
        f"{FER_PLUS_DATA}; backbone pretrained on {pre['training_data']}" if pre.get("training_data") else FER_PLUS_DATA)
    licence = given.get("weights_license") or (
        f"{OWN_WEIGHTS_LICENSE}; backbone {pre['weights_license']}" if pre.get("weights_license") else OWN_WEIGHTS_LICENSE)
    return {"pretrained_from": pretrained, "weights_license": licence, "training_data": data}


def check_bundle_roundtrip(folder: str | Path, images: np.ndarray | None = None, atol: float = 1e-3) -> float:
    """Load ``folder`` with the onnxruntime and torch backends (CPU) and check their probabilities agree.
    Returns the max abs probability difference."""
    import rtfer

    spec_sizes = [int(m["input_size"]) for m in _read_members(folder)]
    if images is None or not len(images) or np.asarray(images).dtype != np.uint8:
        size = max(spec_sizes)
        images = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    ort_b = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu")
    torch_b = rtfer.load_bundle(folder, backend="torch", device="cpu")
    p_ort, p_torch = ort_b.predict(images), torch_b.predict(images)
    diff = float(np.abs(p_ort - p_torch).max())
    if p_ort.shape != (len(images), 7) or diff > atol:
        raise BundleError(f"bundle {folder}: onnxruntime and torch backends disagree (max |p diff| {diff:.3g})")
    log.info("bundle %s: round trip ok (onnxruntime vs torch max |p diff| %.2e)", Path(folder).name, diff)
    return diff


def _read_members(folder: str | Path) -> list[dict]:
    import json

    return json.loads((Path(folder) / BUNDLE_FILE).read_text(encoding="utf-8"))["members"]

