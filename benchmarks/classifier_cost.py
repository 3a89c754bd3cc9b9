"""Per-face cost of a bundle's classifiers: each member and the whole ensemble (preprocess + members + stacker).

Measures what the speed budget is written in: milliseconds per face on ONNX Runtime with one intra-op thread
(``RTFER_ORT_THREADS=1``), for a batch of one face and a batch of 8 faces (the pipeline batches several frames'
faces into one call). Real aligned face crops are not needed for timing; the crops are random pixels at each
member's input size (the network's cost does not depend on the content).

    python benchmarks/classifier_cost.py                     # the built-in default bundle
    python benchmarks/classifier_cost.py --bundle DIR --json out.json
    python benchmarks/classifier_cost.py --record   # also store the batch-1 figures in bundle.json (rtfer info)

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


def time_call(fn, repeats: int, min_seconds: float = 1.0) -> float:
    """Median seconds per call over ``repeats`` calls (at least ``min_seconds`` of calls), after two warm-ups."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(bundle_name: str, batches: tuple[int, ...], repeats: int) -> dict:
    from rtfer.bundle import load_bundle, preprocess

    bundle = load_bundle(bundle_name, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(0)
    result = {"bundle": f"{bundle.spec.name} {bundle.spec.version}", "threads": os.environ.get("RTFER_ORT_THREADS"),
              "rows": []}
    for n in batches:
        crops = {m.input_size: rng.integers(0, 256, (n, m.input_size, m.input_size, 3), dtype=np.uint8)
                 for m in bundle.members}
        for member, backend in zip(bundle.members, bundle.backends):
            x = preprocess(crops[member.input_size], member)
            s = time_call(lambda: backend.infer(x), repeats)
            result["rows"].append({"what": f"{member.name} ({member.architecture} @{member.input_size})",
                                   "batch": n, "ms_per_face": s * 1e3 / n})
        s = time_call(lambda: bundle.predict(crops), repeats)
        result["rows"].append({"what": "ensemble (preprocess + members + stacker)", "batch": n,
                               "ms_per_face": s * 1e3 / n})
    return result


def table(result: dict) -> str:
    lines = [f"bundle {result['bundle']}, onnxruntime, {result['threads']} thread(s)", "",
             "| what | batch | ms per face |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['batch']} | {r['ms_per_face']:.2f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default", help="bundle name or folder (default: the built-in default)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per session (default 1)")
    p.add_argument("--batches", default="1,8", help="comma-separated faces per call (default 1,8)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", default="", help="also write the figures as JSON here")
    p.add_argument("--record", action="store_true",
                   help="store the per-face figures at batch 1 in the bundle's bundle.json (metrics.cost_ms_per_face)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ["RTFER_ORT_THREADS"] = str(a.threads)  # read when the sessions are created
    try:
        batches = tuple(int(v) for v in a.batches.split(","))
    except ValueError:
        print(f"classifier_cost: error: --batches must be integers, got {a.batches!r}", file=sys.stderr)
        return 2
    from rtfer.errors import RtferError

    try:
        result = measure(a.bundle, batches, a.repeats)
    except RtferError as exc:
        print(f"classifier_cost: error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if a.record:
        record(a.bundle, result)
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
                                    f"batch {first}, median")
    write_bundle_json(folder, meta)
    log.warning("recorded %s in %s", cost, folder / BUNDLE_FILE)


if __name__ == "__main__":
    sys.exit(main())
