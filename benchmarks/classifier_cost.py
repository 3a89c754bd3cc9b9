"""Per-face cost of a bundle's classifiers: each member and the whole ensemble (preprocess + members + stacker).

Measures what the speed budget is written in: milliseconds per face on ONNX Runtime with one intra-op thread
(``RTFER_ORT_THREADS=1``), for a batch of one face and a batch of 8 faces (the pipeline batches several frames'
faces into one call). Real aligned face crops are not needed for timing; the crops are random pixels at each
member's input size (the network's cost does not depend on the content).

    python benchmarks/classifier_cost.py                     # the built-in default bundle
    python benchmarks/classifier_cost.py --bundle DIR --json out.json
    python benchmarks/classifier_cost.py --record   # also store the batch-1 figures in bundle.json (rtfer info)
    python benchmarks/classifier_cost.py --precision fp32,int8 --threads 1,2 --opt-level basic,all   # a grid

``--precision`` takes rtfer's --precision values (int8 needs INT8 members: ``python -m rtfer.training quantize``);
``--threads`` and ``--opt-level`` are the onnxruntime session options (intra-op threads, graph optimisation level);
a comma-separated list of each measures every combination.

Run it on an idle machine: a figure taken while training or tests run is not a figure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

log = logging.getLogger("classifier_cost")


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_call(fn, repeats: int, min_seconds: float = 1.0, clock: str = "wall") -> float:
    """Median seconds per call over ``repeats`` calls (at least ``min_seconds`` of calls), after two warm-ups.
    ``clock="cpu"`` times the calling thread's CPU time instead: with one intra-op thread onnxruntime runs on the
    calling thread, so this stays meaningful on a loaded machine (where wall time measures the scheduler)."""
    tick = CLOCKS[clock]
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = tick()
        fn()
        times.append(tick() - t)
    return float(np.median(times))


def measure(bundle_name: str, batches: tuple[int, ...], repeats: int, precision: str = "auto",
            clock: str = "wall", combiner: str = "default") -> dict:
    from rtfer.bundle import load_bundle, preprocess

    bundle = load_bundle(bundle_name, backend="onnxruntime", device="cpu", precision=precision, combiner=combiner)
    rng = np.random.default_rng(0)
    result = {"bundle": f"{bundle.spec.name} {bundle.spec.version}", "threads": os.environ.get("RTFER_ORT_THREADS"),
              "precision": bundle.precision, "opt_level": os.environ.get("RTFER_ORT_OPT_LEVEL", "all"),
              "clock": clock, "combiner": combiner, "rows": []}
    for n in batches:
        crops = {m.input_size: rng.integers(0, 256, (n, m.input_size, m.input_size, 3), dtype=np.uint8)
                 for m in bundle.members}
        for member, backend in zip(bundle.members, bundle.backends):
            x = preprocess(crops[member.input_size], member)
            s = time_call(lambda: backend.infer(x), repeats, clock=clock)
            result["rows"].append({"what": f"{member.name} ({member.architecture} @{member.input_size})",
                                   "batch": n, "ms_per_face": s * 1e3 / n})
        s = time_call(lambda: bundle.predict(crops), repeats, clock=clock)
        what = "ensemble (preprocess + members + stacker" + (", each face and its mirror)" if bundle.tta_flip else ")")
        result["rows"].append({"what": what, "batch": n,
                               "ms_per_face": s * 1e3 / n})
    return result


def table(result: dict) -> str:
    lines = [f"bundle {result['bundle']}, onnxruntime, {result['threads']} thread(s), precision "
             f"{result.get('precision', 'fp32')}, graph optimisation {result.get('opt_level', 'all')}, "
             f"{result.get('clock', 'wall')} clock, combiner {result.get('combiner', 'default')}", "",
             "| what | batch | ms per face |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['batch']} | {r['ms_per_face']:.2f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default", help="bundle name or folder (default: the built-in default)")
    p.add_argument("--threads", default="1", help="onnxruntime intra-op threads per session (default 1; a list "
                                                  "such as 1,2 measures each)")
    p.add_argument("--precision", default="auto",
                   help="auto, fp32, fp16 or int8 (rtfer --precision; a list such as fp32,int8 measures each)")
    p.add_argument("--opt-level", default="all",
                   help="graph optimisation: disable, basic, extended or all (a list measures each; default all)")
    p.add_argument("--batches", default="1,8", help="comma-separated faces per call (default 1,8)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall (default) or cpu: the calling thread's CPU time, for a loaded machine (1 thread only)")
    p.add_argument("--combiner", default="default",
                   help="the bundle's combiner (a flip combiner reads each face and its mirror image; rtfer info)")
    p.add_argument("--json", default="", help="also write the figures as JSON here")
    p.add_argument("--record", action="store_true",
                   help="store the per-face figures at batch 1 in the bundle's bundle.json (metrics.cost_ms_per_face)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        batches = tuple(int(v) for v in a.batches.split(","))
        threads = [int(v) for v in a.threads.split(",")]
    except ValueError:
        print(f"classifier_cost: error: --batches and --threads must be integers, got {a.batches!r} / {a.threads!r}",
              file=sys.stderr)
        return 2
    precisions, levels = a.precision.split(","), a.opt_level.split(",")
    from rtfer.backends.onnxruntime import OPT_LEVELS
    from rtfer.bundle import PRECISIONS
    from rtfer.errors import RtferError

    bad = [f"unknown --precision/--opt-level value {v!r}" for v in precisions if v not in PRECISIONS] + \
        [f"unknown --precision/--opt-level value {v!r}" for v in levels if v not in OPT_LEVELS]
    if a.record and a.combiner != "default":
        bad.append("--record stores the default combiner's cost: drop --combiner")
    if a.clock == "cpu" and max(threads) > 1:
        bad.append("--clock cpu needs --threads 1")
    if min(threads) < 1:
        bad.append("--threads must be >= 1")
    if bad:
        print(f"classifier_cost: error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    results = []
    for precision in precisions:
        for level in levels:
            for n in threads:
                os.environ["RTFER_ORT_THREADS"] = str(n)  # read when the sessions are created
                os.environ["RTFER_ORT_OPT_LEVEL"] = level
                try:
                    result = measure(a.bundle, batches, a.repeats, precision, a.clock, a.combiner)
                except RtferError as exc:
                    print(f"classifier_cost: error: {exc}", file=sys.stderr)
                    return 2
                print(table(result) + "\n")
                results.append(result)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=2)
    if a.record:
        record(a.bundle, results[0])
    return 0


def record(bundle_name: str, result: dict) -> None:
    """Write the batch-1 per-face figures into bundle.json ``metrics.cost_ms_per_face`` (members by name)."""
    from rtfer.bundle import BUNDLE_FILE, resolve_bundle_path, write_bundle_json

    folder = resolve_bundle_path(bundle_name)
    meta = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
    first = min(r["batch"] for r in result["rows"])
    cost = {r["what"].split(" ")[0]: round(r["ms_per_face"], 2) for r in result["rows"] if r["batch"] == first}
    meta.setdefault("metrics", {})["cost_ms_per_face"] = cost
    meta["metrics"]["cost_note"] = (f"benchmarks/classifier_cost.py: onnxruntime, {result['threads']} thread(s), "
                                    f"batch {first}, median, precision {result.get('precision', 'fp32')}, "
                                    f"{result.get('clock', 'wall')} clock")
    write_bundle_json(folder, meta)
    log.warning("recorded %s in %s", cost, folder / BUNDLE_FILE)


if __name__ == "__main__":
    sys.exit(main())
