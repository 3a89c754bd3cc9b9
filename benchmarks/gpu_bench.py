"""Ensemble throughput (faces/s) by batch size for each inference mode, written as JSON and a Markdown table.

    python benchmarks/gpu_bench.py --out results/gpu [--bundle default|tiny|PATH] [--device cuda[:N]|cpu]
                                   [--batches 1 8 32 128 512] [--modes ...] [--max-batch 64] [--min-time 2]

Modes (a face = every member's forward pass + softmax + the bundle's ensemble, numpy in -> numpy out, like
``Bundle.predict`` after preprocessing; batches above ``--max-batch`` are split as the runtime splits them):

- ``torch-fp32``: eager FP32 on the TorchBackend's module (the reference),
- ``torch-fp16-autocast``: the same module under ``torch.autocast(float16)`` (CUDA only),
- ``torch-fp16-cudagraphs``: ``TorchBackend.infer`` on CUDA (FP16 autocast + one CUDA graph per batch bucket),
- ``tensorrt-fp16``: ``TensorRTBackend`` (only where TensorRT is installed; first run builds engines, minutes),
- ``onnxruntime-cpu``: ``OnnxRuntimeBackend`` on the CPU (the baseline every machine has).

Inputs are random preprocessed crops (content does not change the cost). Each mode's probabilities are also compared
with ``torch-fp32`` on the same inputs (max |p diff|, top-1 agreement), which is where FP16 overflow would show.
``--device cpu --batches 1 8`` is a smoke test that runs anywhere; ``--bundle tiny`` exports a tiny random bundle
(ddamfn_tiny + convnextv2_test) when no trained bundle is at hand — its figures measure the plumbing, not the models.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu_bench")

ALL_MODES = ("torch-fp32", "torch-fp16-autocast", "torch-fp16-cudagraphs", "tensorrt-fp16", "onnxruntime-cpu")
DEFAULT_BATCHES = (1, 8, 32, 128, 512)


@dataclass
class Cell:
    mode: str
    batch: int
    faces_per_s: float | None = None
    ms_median: float | None = None
    ms_p90: float | None = None
    iters: int = 0
    error: str | None = None


@dataclass
class ModeInfo:
    mode: str
    describe: str = ""
    load_s: float = 0.0
    skipped: str | None = None
    max_abs_prob_diff_vs_fp32: float | None = None
    top1_agreement_vs_fp32: float | None = None
    cells: list[Cell] = field(default_factory=list)


def tiny_bundle(work: Path) -> Path:
    """Export a tiny random two-member bundle (needs torch + timm)."""
    import torch

    from rtfer.models import create_model
    from rtfer.training.export import write_bundle

    torch.manual_seed(0)
    return write_bundle(work / "tiny_bundle", [{"model": create_model("ddamfn_tiny").eval(), "name": "ddamfn"},
                                               {"model": create_model("convnextv2_test").eval(), "name": "convnext"}],
                        {"method": "soft_vote", "weights": [0.5, 0.5]}, name="tiny-random", version="0",
                        interim=True)


def resolve_bundle(name: str, work: Path) -> tuple[Path, str]:
    from rtfer.bundle import resolve_bundle_path
    from rtfer.errors import BundleError

    if name == "tiny":
        return tiny_bundle(work), "tiny random (ddamfn_tiny + convnextv2_test)"
    try:
        return resolve_bundle_path(name), name
    except BundleError:
        if name != "default":
            raise
        log.warning("the default bundle is missing: using a tiny random bundle (ddamfn_tiny + convnextv2_test)")
        return tiny_bundle(work), "tiny random (default bundle missing)"


# ---- modes: each gives per-member callables (n,3,S,S) float32 -> (n,C) float32 logits ------------------------------

def _torch_eager(backends, autocast: bool) -> list[Callable[[np.ndarray], np.ndarray]]:
    import torch

    def make(b):
        def run(x: np.ndarray) -> np.ndarray:
            outs = []
            with torch.inference_mode():
                for chunk in b._chunks(x):
                    t = torch.from_numpy(chunk).to(b.dev)
                    if b.cuda:
                        t = t.contiguous(memory_format=torch.channels_last)
                    if autocast:
                        with torch.autocast("cuda", dtype=torch.float16):
                            y = b.model(t)
                    else:
                        y = b.model(t)
                    outs.append(y.float().cpu().numpy())
            return np.concatenate(outs)
        return run

    return [make(b) for b in backends]


def load_mode(mode: str, spec, device: str, max_batch: int, torch_backends: dict) -> tuple[list, str]:
    """Per-member inference callables for ``mode`` and a description; raises RuntimeError with a skip reason."""
    cuda = device.startswith("cuda")
    members = [(spec.path / m.file, m.to_dict()) for m in spec.members]
    if mode == "onnxruntime-cpu":
        from rtfer.backends.onnxruntime import OnnxRuntimeBackend

        bs = [OnnxRuntimeBackend(p, device="cpu", member=m, max_batch=max_batch) for p, m in members]
        for b in bs:
            b.load()
        return [b.infer for b in bs], bs[0].describe()
    if mode == "tensorrt-fp16":
        import importlib.util

        if not cuda:
            raise RuntimeError("needs a CUDA device")
        if importlib.util.find_spec("tensorrt") is None:
            raise RuntimeError("TensorRT is not installed")
        from rtfer.backends.tensorrt import TensorRTBackend

        bs = [TensorRTBackend(p, device=device, member=m, max_batch=max_batch) for p, m in members]
        for b in bs:
            b.load()
        return [b.infer for b in bs], bs[0].describe()
    if mode != "torch-fp32" and not cuda:
        raise RuntimeError("FP16 autocast and CUDA graphs need a CUDA device")
    if "backends" not in torch_backends:
        from rtfer.backends.torch import TorchBackend

        bs = [TorchBackend(p, device=device, member=m, max_batch=max_batch) for p, m in members]
        for b in bs:
            b.load()
        torch_backends["backends"] = bs
    bs = torch_backends["backends"]
    if mode == "torch-fp32":
        return _torch_eager(bs, autocast=False), f"torch eager fp32 on {bs[0].dev}"
    if mode == "torch-fp16-autocast":
        return _torch_eager(bs, autocast=True), f"torch eager fp16 autocast on {bs[0].dev}"
    if mode == "torch-fp16-cudagraphs":
        return [b.infer for b in bs], bs[0].describe()
    raise ValueError(f"unknown mode {mode!r}")


def ensemble_fn(spec, member_fns) -> Callable[[list[np.ndarray]], np.ndarray]:
    from rtfer.ensemble import make_ensemble, softmax

    ens = make_ensemble(spec.ensemble, len(spec.members), spec.temperature)

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        return ens([softmax(f(x), m.temperature) for f, x, m in zip(member_fns, inputs, spec.members)])

    return run


def time_cell(fn: Callable[[], object], *, warmup: int, min_time: float, min_iters: int,
              max_iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(times) < min_iters or (time.perf_counter() < deadline and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def environment(device: str) -> dict:
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                 "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    try:
        import torch

        env["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            idx = int(device.partition(":")[2] or 0)
            env["gpu"] = torch.cuda.get_device_name(idx)
            env["compute_capability"] = list(torch.cuda.get_device_capability(idx))
            env["cuda"] = torch.version.cuda
            env["tf32_conv"] = torch.backends.cudnn.allow_tf32  # torch-fp32 convolutions may use TF32
            env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    except ImportError:
        pass
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    return env


def markdown(report: dict) -> str:
    modes = [m for m in report["modes"] if not m["skipped"]]
    batches = report["batches"]
    env = report["environment"]
    lines = [f"# Ensemble throughput — {report['bundle']}", "",
             f"Device `{report['device']}` ({env.get('gpu', 'CPU')}), torch {env.get('torch')}, onnxruntime "
             f"{env.get('onnxruntime')}, TensorRT {env.get('tensorrt')}, {env.get('cpus')} CPUs, "
             f"max_batch {report['max_batch']}, {env['date_utc']}.", "",
             "Faces per second (both members + ensemble, numpy in/out; median over repeats):", "",
             "| batch | " + " | ".join(m["mode"] for m in modes) + " |",
             "|---:|" + "---:|" * len(modes)]

    def cell(m, b, key, fmt):
        c = next((c for c in m["cells"] if c["batch"] == b), None)
        if c is None:
            return "—"
        return c["error"] or fmt.format(c[key])

    for b in batches:
        lines.append(f"| {b} | " + " | ".join(cell(m, b, "faces_per_s", "{:,.0f}") for m in modes) + " |")
    lines += ["", "Latency per batch, ms (median / p90):", "",
              "| batch | " + " | ".join(m["mode"] for m in modes) + " |", "|---:|" + "---:|" * len(modes)]
    for b in batches:
        row = []
        for m in modes:
            c = next((c for c in m["cells"] if c["batch"] == b), None)
            row.append("—" if c is None else (c["error"] or f"{c['ms_median']:.2f} / {c['ms_p90']:.2f}"))
        lines.append(f"| {b} | " + " | ".join(row) + " |")
    lines += ["", "| mode | runs as | load s | max abs p diff vs torch-fp32 | top-1 agreement |",
              "|---|---|---:|---:|---:|"]
    for m in report["modes"]:
        if m["skipped"]:
            lines.append(f"| {m['mode']} | skipped: {m['skipped']} | | | |")
            continue
        diff = "—" if m["max_abs_prob_diff_vs_fp32"] is None else f"{m['max_abs_prob_diff_vs_fp32']:.2e}"
        agree = "—" if m["top1_agreement_vs_fp32"] is None else f"{m['top1_agreement_vs_fp32']:.3f}"
        lines.append(f"| {m['mode']} | {m['describe']} | {m['load_s']:.1f} | {diff} | {agree} |")
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    from rtfer.bundle import BundleSpec
    from rtfer.errors import RtferError

    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    bundle_path, label = resolve_bundle(args.bundle, work)
    spec = BundleSpec.read(bundle_path)
    batches = sorted(set(args.batches))
    rng = np.random.default_rng(0)
    # Preprocessed-range inputs: normalised crops are roughly N(0, 1).
    inputs = [rng.standard_normal((max(batches), 3, m.input_size, m.input_size), dtype=np.float32)
              for m in spec.members]
    check_n = min(max(batches), 64)
    report = {"bundle": label, "bundle_path": str(bundle_path), "device": args.device, "max_batch": args.max_batch,
              "batches": batches, "environment": environment(args.device),
              "members": [{"name": m.name, "architecture": m.architecture, "input_size": m.input_size}
                          for m in spec.members], "modes": []}
    torch_backends: dict = {}
    reference = None
    modes = list(args.modes)
    if "torch-fp32" in modes:  # the reference runs first
        modes.remove("torch-fp32")
        modes.insert(0, "torch-fp32")
    for mode in modes:
        info = ModeInfo(mode)
        t0 = time.perf_counter()
        try:
            fns, info.describe = load_mode(mode, spec, args.device, args.max_batch, torch_backends)
        except (RuntimeError, ImportError, RtferError) as exc:  # missing SDK or device: skip the mode, say why
            info.skipped = str(exc).splitlines()[0]
            log.info("%s: skipped (%s)", mode, info.skipped)
            report["modes"].append(asdict(info))
            continue
        info.load_s = time.perf_counter() - t0
        fn = ensemble_fn(spec, fns)
        probs = fn([x[:check_n] for x in inputs])
        if mode == "torch-fp32":
            reference = probs
        if reference is not None:
            info.max_abs_prob_diff_vs_fp32 = float(np.abs(probs - reference).max())
            info.top1_agreement_vs_fp32 = float((probs.argmax(1) == reference.argmax(1)).mean())
        for b in batches:
            cell = Cell(mode, b)
            batch_inputs = [x[:b] for x in inputs]
            try:
                times = time_cell(lambda: fn(batch_inputs), warmup=args.warmup, min_time=args.min_time,
                                  min_iters=args.min_iters, max_iters=args.max_iters)
            except Exception as exc:  # CUDA OOM and backend failures end this cell, not the benchmark
                cell.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                log.warning("%s batch %d: %s", mode, b, cell.error)
                _empty_cuda_cache()
            else:
                med = statistics.median(times)
                cell.ms_median = med * 1e3
                cell.ms_p90 = float(np.percentile(times, 90)) * 1e3
                cell.faces_per_s = b / med
                cell.iters = len(times)
                log.info("%-22s batch %4d: %10.1f faces/s  (%.2f ms, %d runs)", mode, b, cell.faces_per_s,
                         cell.ms_median, cell.iters)
            info.cells.append(cell)
        report["modes"].append(asdict(info))
    return report


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.json and gpu_bench.md")
    ap.add_argument("--bundle", default="default", help="bundle name or folder, or 'tiny' (default: default)")
    ap.add_argument("--device", default="cuda", help="cuda[:N] or cpu (default cuda)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    ap.add_argument("--modes", nargs="+", choices=ALL_MODES, default=list(ALL_MODES))
    ap.add_argument("--max-batch", type=int, default=64, help="the backends' max_batch (runtime default 64)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per cell (captures CUDA graphs)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per cell")
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA device visible to torch; use --device cpu for the CPU smoke test")
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = markdown(report)
    (args.out / "gpu_bench.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
