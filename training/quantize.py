"""INT8 static quantisation of a bundle's members with ONNX Runtime's quantisation tools.

``python -m rtfer.training quantize BUNDLE --calib VAL [--val VAL] [--format auto|qdq|qoperator]``

For each member: the FP16-stored weights are turned back into FP32 initializers (the quantiser wants an FP32
graph), ``quant_pre_process`` folds BatchNorm and infers shapes, and ``quantize_static`` calibrates activation ranges
on real aligned validation crops preprocessed exactly as the runtime does (``rtfer.bundle.preprocess``). Weights are
INT8 per output channel, activations UINT8.

The INT8 members are then measured against the FP members on the validation split, through the runtime's own
backend, member temperatures and ensemble: accuracy and mean-class accuracy of every member and of the ensemble, and
the per-face cost on onnxruntime with one intra-op thread (batch 1, median). INT8 is *accepted* as the default CPU
precision (``--precision auto``) only when the ensemble loses at most ``max_drop`` points (0.5) of accuracy.
With ``--format auto`` both ONNX Runtime formats are built and measured (QDQ: QuantizeLinear/DequantizeLinear pairs
that ORT fuses into integer kernels; QOperator: QLinearConv/QLinearMatMul nodes); the faster accepted one is kept.

INT8 is chosen per member: a member whose INT8 network is not at least ``MIN_GAIN`` (5%) faster than its FP network
on one thread (depthwise-heavy nets such as DDAMFN often are not) keeps its FP file under ``--precision int8``; the
mixed set is measured like the others (accuracy and cost) and competes with them.

Writes ``<member>.int8.onnx`` next to each member file that runs INT8, the member's ``int8`` entry (file, sha256, and
the sha256 of the FP file it was made from; ``"kept_fp": true`` with the FP file where INT8 did not pay) and
``quantization.int8`` in bundle.json.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)

FORMATS = ("qdq", "qoperator")
METHODS = ("minmax", "entropy", "percentile")
MAX_DROP_POINTS = 0.5  # the accuracy gate: ensemble val accuracy may drop by at most this many points
MIN_GAIN = 0.05  # a member runs INT8 only if that is at least this much faster than its FP network


# ---- graph preparation ------------------------------------------------------------------------------------------------

def fp32_graph(src: str | Path, dst: str | Path) -> Path:
    """Undo rtfer.training.export.fp16_weights: FP16 initializers followed by Cast-to-FP32 become FP32 initializers
    again (the quantiser calibrates and quantises FP32 weights; a Cast in front of a Conv weight hides it)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    fp16 = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    renamed: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0] in fp16 and \
                any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute):
            renamed[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    for name in set(renamed.values()):
        init = fp16[name]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), name))
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(keep)
    infos = [vi for vi in graph.value_info if vi.name not in renamed and vi.name not in fp16]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    onnx.checker.check_model(proto)
    dst = Path(dst)
    onnx.save(proto, str(dst))
    return dst


class _CropReader:
    """onnxruntime CalibrationDataReader over preprocessed crops, ``batch`` at a time."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self.input_name, self.x, self.batch = input_name, x, batch
        self.rewind()

    def get_next(self):
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: np.ascontiguousarray(chunk, np.float32)}

    def rewind(self) -> None:
        self.pos = 0


def quantize_member(fp_file: str | Path, out: str | Path, member, calib_crops: np.ndarray, *, fmt: str = "qdq",
                    method: str = "minmax", per_channel: bool = True, op_types: list[str] | None = None) -> Path:
    """One member's INT8 ONNX file from its FP file, calibrated on ``calib_crops`` (n, S, S, 3) uint8 RGB.
    ``op_types``: the node types to quantise (None: every type onnxruntime can quantise)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rtfer.bundle import preprocess

    if fmt not in FORMATS:
        raise InputError(f"quantisation format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if method not in METHODS:
        raise InputError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    x = preprocess(calib_crops, member)
    if member.tta_flip:  # the runtime also feeds the mirror image: calibrate on both
        x = np.concatenate([x, np.ascontiguousarray(x[..., ::-1])])

    class Reader(_CropReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = fp32_graph(fp_file, Path(tmp) / "fp32.onnx")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        import onnx

        input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        quantize_static(str(pre), str(out), Reader(input_name, x),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calib, op_types_to_quantize=op_types or None)
    log.info("quantised %s -> %s (%s, %s calibration on %d crops, %.1f MB -> %.1f MB)", Path(fp_file).name,
             Path(out).name, fmt, method, len(x), Path(fp_file).stat().st_size / 1e6, Path(out).stat().st_size / 1e6)
    return Path(out)


# ---- measuring ---------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def ort_threads(n: int):
    """Sessions created inside use ``n`` intra-op threads (rtfer.backends.onnxruntime reads RTFER_ORT_THREADS)."""
    old = os.environ.get("RTFER_ORT_THREADS")
    os.environ["RTFER_ORT_THREADS"] = str(int(n))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RTFER_ORT_THREADS", None)
        else:
            os.environ["RTFER_ORT_THREADS"] = old


def _backends(spec, files: list[Path]):
    from rtfer.backends import create_backend

    return [create_backend("onnxruntime", f, device="cpu", member=m.to_dict(), max_batch=256)
            for m, f in zip(spec.members, files)]


def _member_probs(spec, backends, crops: np.ndarray) -> list[np.ndarray]:
    """As rtfer.bundle.Bundle.member_probs, for an arbitrary set of member files."""
    from rtfer.bundle import preprocess
    from rtfer.ensemble import softmax

    out = []
    for m, b in zip(spec.members, backends):
        x = preprocess(crops, m)
        logits = b.infer(x)
        if m.tta_flip:
            logits = (logits + b.infer(np.ascontiguousarray(x[..., ::-1]))) / 2
        out.append(softmax(logits, m.temperature))
    return out


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    from rtfer.training.evaluate import ClassificationMetrics

    r = ClassificationMetrics().update(probs, labels).compute()
    return {"accuracy": r.accuracy, "mean_class_accuracy": r.mean_class_accuracy}


def evaluate_files(spec, files: list[Path], crops: np.ndarray, labels: np.ndarray, threads: int = 0) -> dict:
    """Accuracy of each member and of the bundle's ensemble when the members run from ``files``."""
    from rtfer.ensemble import make_ensemble

    with ort_threads(threads or max(1, os.cpu_count() or 1)):
        backends = _backends(spec, files)
    chunks = [_member_probs(spec, backends, crops[i:i + 512]) for i in range(0, len(crops), 512)]
    probs = [np.concatenate([c[k] for c in chunks]) for k in range(len(files))]
    ens = make_ensemble(spec.ensemble, len(files), spec.temperature)(probs)
    return {"ensemble": _scores(ens, labels),
            "members": {m.name: _scores(p, labels) for m, p in zip(spec.members, probs)},
            "predictions": ens.argmax(1)}


def _median_seconds(fn, min_calls: int = 30, min_seconds: float = 1.0, clock=time.perf_counter) -> float:
    fn()
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = clock()
        fn()
        times.append(clock() - t)
    return float(np.median(times))


def cost_files(spec, files: list[Path], threads: int = 1, min_seconds: float = 1.0) -> dict[str, float]:
    """Milliseconds per face at batch 1 on ``threads`` intra-op threads: each member's network and the whole ensemble
    (preprocess + members + ensemble), as benchmarks/classifier_cost.py measures them. With one thread onnxruntime
    runs on the calling thread, so that thread's CPU time is measured: a figure that other processes (a training
    run) do not distort, as they would wall time."""
    from rtfer.bundle import preprocess
    from rtfer.ensemble import make_ensemble

    with ort_threads(threads):
        backends = _backends(spec, files)
    rng = np.random.default_rng(0)
    size = max(m.input_size for m in spec.members)
    crop = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    clock = time.thread_time if threads == 1 else time.perf_counter
    out = {}
    for m, b in zip(spec.members, backends):
        x = preprocess(crop, m)
        out[m.name] = round(_median_seconds(lambda: b.infer(x), min_seconds=min_seconds, clock=clock) * 1e3, 3)
    ens = make_ensemble(spec.ensemble, len(files), spec.temperature)
    out["ensemble"] = round(_median_seconds(lambda: ens(_member_probs(spec, backends, crop)),
                                            min_seconds=min_seconds, clock=clock) * 1e3, 3)
    return out


# ---- the command ---------------------------------------------------------------------------------------------------

def load_crops(source: str | Path, count: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(crops (n, S, S, 3) uint8 RGB, labels, description) from a packed .npz or an image-class folder; ``count``
    > 0 draws a stratified-by-chance random subset of that many."""
    from rtfer.training.data import DataSpec, load_split

    path = Path(source)
    if path.is_dir():
        data = load_split(DataSpec(kind="folder", root=str(path), split=""))
    elif path.is_file() and path.suffix == ".npz":
        data = load_split(path)
    else:
        raise InputError(f"{source} is neither a packed .npz nor an image-class folder")
    if len(data) == 0:
        raise InputError(f"{source} holds no images")
    idx = np.arange(len(data))
    if count and count < len(data):
        idx = np.sort(np.random.default_rng(seed).choice(len(data), size=count, replace=False))
    imgs = data.images[idx]
    crops = np.repeat(imgs, 3, axis=-1) if imgs.shape[-1] == 1 else imgs
    return np.ascontiguousarray(crops), data.labels[idx], f"{source} ({len(idx)} of {len(data)} images)"


@dataclass
class Candidate:
    fmt: str
    files: list[Path]
    val: dict
    cost: dict[str, float]
    drop_points: float
    int8_members: tuple[bool, ...] = ()  # per member: runs INT8 (True) or keeps its FP file

    @property
    def accepted(self) -> bool:
        return self.drop_points <= MAX_DROP_POINTS

    @property
    def label(self) -> str:
        return self.fmt if all(self.int8_members) else f"{self.fmt}+fp"


def int8_pays(names: list[str], fp_cost: dict[str, float], int8_cost: dict[str, float],
              min_gain: float = MIN_GAIN) -> tuple[bool, ...]:
    """Per member: is its INT8 network at least ``min_gain`` faster than its FP network (ms per face)?"""
    return tuple(int8_cost[n] < (1.0 - min_gain) * fp_cost[n] for n in names)


def quantize_bundle(bundle: str | Path, calib: str | Path, *, val: str | Path | None = None, fmt: str = "auto",
                    method: str = "minmax", calib_count: int = 512, per_channel: bool = True, seed: int = 0,
                    max_drop: float = MAX_DROP_POINTS, cost_threads: int = 1, min_seconds: float = 1.0,
                    per_member: bool = True) -> dict:
    """Add INT8 members to the bundle folder ``bundle`` and record FP vs INT8 in its bundle.json; returns the
    ``quantization.int8`` record. The FP member files and everything else in the bundle stay as they are.
    ``per_member``: also measure the set where each member runs INT8 only if that pays (:func:`int8_pays`)."""
    from rtfer import __version__ as rtfer_version
    from rtfer.bundle import BUNDLE_FILE, BundleSpec, resolve_bundle_path, sha256_file, write_bundle_json

    import onnxruntime as ort

    folder = resolve_bundle_path(bundle)
    spec = BundleSpec.read(folder)
    spec.verify()
    formats = FORMATS if fmt == "auto" else (fmt,)
    if any(f not in FORMATS for f in formats):
        raise InputError(f"--format must be auto, {' or '.join(FORMATS)}, got {fmt!r}")
    calib_crops, _, calib_note = load_crops(calib, calib_count, seed)
    val_crops, val_labels, val_note = load_crops(val or calib)
    log.info("calibration: %s; validation: %s", calib_note, val_note)

    fp_files = [folder / m.file for m in spec.members]
    fp_val = evaluate_files(spec, fp_files, val_crops, val_labels)
    fp_cost = cost_files(spec, fp_files, cost_threads, min_seconds)
    log.info("fp: ensemble val accuracy %.4f, %.2f ms per face", fp_val["ensemble"]["accuracy"], fp_cost["ensemble"])

    def measure(fmt_: str, int8_files: list[Path], use: tuple[bool, ...]) -> Candidate:
        """The candidate where member k runs its INT8 file if use[k], else its FP file: val accuracy and cost."""
        files = [q if u else fp for q, fp, u in zip(int8_files, fp_files, use)]
        v = evaluate_files(spec, files, val_crops, val_labels)
        c = cost_files(spec, files, cost_threads, min_seconds)
        cand = Candidate(fmt_, files, v, c, 100 * (fp_val["ensemble"]["accuracy"] - v["ensemble"]["accuracy"]), use)
        log.info("int8 %s: ensemble val accuracy %.4f (%+.2f points), %.2f ms per face", cand.label,
                 v["ensemble"]["accuracy"], -cand.drop_points, c["ensemble"])
        return cand

    tmp = Path(tempfile.mkdtemp(prefix="rtfer-quant-"))
    try:
        candidates = []
        for f in formats:
            files = [quantize_member(folder / m.file, tmp / f"{Path(m.file).stem}.{f}.onnx", m, calib_crops,
                                     fmt=f, method=method, per_channel=per_channel) for m in spec.members]
            candidates.append(measure(f, files, (True,) * len(files)))
            pays = int8_pays([m.name for m in spec.members], fp_cost, candidates[-1].cost)
            if per_member and any(pays) and not all(pays):  # FP where INT8 does not pay
                candidates.append(measure(f, files, pays))
        accepted = [c for c in candidates if c.drop_points <= max_drop]
        best = min(accepted, key=lambda c: c.cost["ensemble"]) if accepted else min(candidates,
                                                                                   key=lambda c: c.drop_points)
        meta = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
        for m, src, use, md in zip(spec.members, best.files, best.int8_members, meta["members"]):
            name = f"{Path(m.file).stem}.int8.onnx"
            if use:
                shutil.copyfile(src, folder / name)
                md["int8"] = {"file": name, "from_sha256": sha256_file(folder / m.file)}
            else:  # INT8 did not pay for this member: it runs its FP file under --precision int8
                (folder / name).unlink(missing_ok=True)
                md["int8"] = {"file": m.file, "from_sha256": sha256_file(folder / m.file), "kept_fp": True}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def val_record(v: dict) -> dict:
        return {"ensemble": v["ensemble"], "members": v["members"]}

    agreement = float((best.val["predictions"] == fp_val["predictions"]).mean())
    record = {
        "accepted": best.drop_points <= max_drop,
        "reason": (f"ensemble val accuracy {'drops' if best.drop_points > 0 else 'changes'} by "
                   f"{best.drop_points:+.2f} points ({'<=' if best.drop_points <= max_drop else '>'} {max_drop})"),
        "format": best.fmt.upper() if best.fmt == "qdq" else "QOperator",
        "members": {m.name: "int8" if use else "fp (int8 not faster)" for m, use in zip(spec.members,
                                                                                       best.int8_members)},
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor", "activations": "uint8",
        "calibration": {"data": calib_note, "method": method, "seed": seed},
        "val": {"data": val_note, "count": int(len(val_labels)), "fp": val_record(fp_val),
                "int8": val_record(best.val), "drop_points": round(best.drop_points, 3),
                "top1_agreement_with_fp": round(agreement, 4)},
        "cost_ms_per_face": {"fp": fp_cost, "int8": best.cost,
                             "note": f"onnxruntime {ort.__version__}, {cost_threads} intra-op thread(s), batch 1, "
                                     f"median {'thread CPU' if cost_threads == 1 else 'wall'} time; "
                                     "ensemble = preprocess + members + ensemble"},
        "candidates": [{"format": c.label, "accuracy": c.val["ensemble"]["accuracy"],
                        "drop_points": round(c.drop_points, 3), "cost_ms_per_face": c.cost} for c in candidates],
        "tool": f"python -m rtfer.training quantize (rtfer {rtfer_version}, onnxruntime {ort.__version__})",
    }
    meta.setdefault("quantization", {})["int8"] = record
    write_bundle_json(folder, meta)
    BundleSpec.read(folder).verify()
    log.info("bundle %s: INT8 %s %s (%s)", folder, record["format"], "accepted" if record["accepted"] else
             "NOT accepted", record["reason"])
    return record


def summary_table(record: dict) -> str:
    """Markdown: FP vs INT8 accuracy and cost, as recorded in bundle.json."""
    v, c = record["val"], record["cost_ms_per_face"]
    lines = ["| what | val accuracy fp | val accuracy int8 | ms/face fp | ms/face int8 |", "|---|---|---|---|---|"]
    for name in [*v["fp"]["members"], "ensemble"]:
        fp = v["fp"]["ensemble"] if name == "ensemble" else v["fp"]["members"][name]
        q = v["int8"]["ensemble"] if name == "ensemble" else v["int8"]["members"][name]
        lines.append(f"| {name} | {100 * fp['accuracy']:.2f}% | {100 * q['accuracy']:.2f}% | "
                     f"{c['fp'].get(name, float('nan')):.2f} | {c['int8'].get(name, float('nan')):.2f} |")
    lines.append("")
    lines.append(f"INT8 {record['format']}: {'accepted' if record['accepted'] else 'not accepted'} — {record['reason']}")
    for cand in record.get("candidates", []):
        lines.append(f"- candidate {cand['format']}: accuracy {100 * cand['accuracy']:.2f}% "
                     f"({-cand['drop_points']:+.2f} points), {cand['cost_ms_per_face']['ensemble']:.2f} ms/face")
    return "\n".join(lines)
