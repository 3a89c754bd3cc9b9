"""Time to the first result row: from the start of ``rtfer analyze`` to the first data row in its CSV.

Spawns ``rtfer analyze CLIP -o OUT.csv -q`` as a whole process, watches the CSV (rtfer writes it incrementally and
flushes each frame) and records when the header and the first data row appear, and when the process ends. Repeats
``--repeats`` times and reports the median and the minimum of each.

``--breakdown`` also runs the same steps inside one child process with a clock between them (imports, bundle load
with its onnxruntime sessions, detector load, opening the source, the first result) to show where the time goes,
as wall and CPU seconds (CPU seconds stay meaningful on a loaded machine; wall seconds do not).

    python benchmarks/first_row.py ../shared/fixtures/videos/anger_diverhansun_01.mp4 --repeats 5 --breakdown
    python benchmarks/first_row.py CLIP --rtfer-args "--precision int8" --json out/first_row.json

Run it on an idle machine: a figure taken while training or tests run is not a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Run in a child process by ``--breakdown``: one JSON object of seconds since the child's start per step.
BREAKDOWN = r'''
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
marks = {}
def mark(name):  # wall seconds and CPU seconds (all threads) since start: CPU time shows the work under load
    marks[name] = [round(time.perf_counter() - t0, 4), round(time.process_time() - c0, 4)]
import rtfer.cli  # what `rtfer` imports before parsing its arguments
mark("import rtfer.cli")
from rtfer.pipeline import AnalyzeOptions, Pipeline
mark("import rtfer.pipeline")
from rtfer.bundle import load_bundle
o = AnalyzeOptions(**json.loads(sys.argv[2]))
bundle = load_bundle(o.bundle, backend=o.backend, device=o.device, precision=o.precision)
mark("load bundle (onnxruntime sessions)")
p = Pipeline(o, bundle=bundle)
mark("load detector")
it = p.run(sys.argv[1])
next(it)
mark("first result")
it.close()
print(json.dumps(marks))
'''


def rtfer_command(clip: str, out_csv: Path, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).parent / "rtfer"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rtfer.cli"]
    return [*head, "analyze", clip, "-o", str(out_csv), "-q", *extra]


def first_row_once(clip: str, extra: list[str], poll_s: float = 0.002, timeout_s: float = 600) -> dict:
    """Seconds from spawning rtfer to its CSV header, its first data row and the end of the process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        t0 = time.perf_counter()
        proc = subprocess.Popen(rtfer_command(clip, out, extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        header = first = None
        while True:
            now = time.perf_counter() - t0
            if first is None and out.exists():
                with open(out, "rb") as f:
                    lines = f.read().split(b"\n")
                if header is None and len(lines) >= 2:
                    header = now
                if len(lines) >= 3 and lines[1]:  # a complete first data row
                    first = now
            if proc.poll() is not None:
                break
            if now > timeout_s:
                proc.kill()
                raise RuntimeError(f"rtfer did not finish within {timeout_s} s")
            time.sleep(poll_s)
        end = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"rtfer analyze failed ({proc.returncode}): {err.strip()[-300:]}")
        if first is None:  # a very short clip can finish between two polls
            first = end
        return {"header_s": header if header is not None else end, "first_row_s": first, "total_s": end}


def breakdown(clip: str, options: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", BREAKDOWN, clip, json.dumps(options)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-300:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interpreter_start() -> float:
    """Seconds to start this Python and exit (the floor under every figure above)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clip", help="video (or image / folder) to analyse")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rtfer-args", default="", help="extra rtfer analyze options, e.g. \"--precision fp32\"")
    p.add_argument("--breakdown", action="store_true", help="also time the start-up steps inside one process")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if not Path(a.clip).exists():
        print(f"first_row: error: no such input: {a.clip}", file=sys.stderr)
        return 2
    if a.repeats < 1:
        print("first_row: error: --repeats must be >= 1", file=sys.stderr)
        return 2
    extra = shlex.split(a.rtfer_args)
    try:
        runs = [first_row_once(a.clip, extra) for _ in range(a.repeats)]
    except RuntimeError as exc:
        print(f"first_row: error: {exc}", file=sys.stderr)
        return 2
    result = {"clip": a.clip, "rtfer_args": a.rtfer_args, "runs": runs, "python_start_s": interpreter_start(),
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for key in ("header_s", "first_row_s", "total_s"):
        vals = [r[key] for r in runs]
        result[key] = {"median": statistics.median(vals), "min": min(vals)}
    print(f"{a.clip} ({a.repeats} runs, rtfer args {a.rtfer_args or 'none'}; load average "
          f"{result['load_average']:.2f})")
    print("| from the command's start to | median | min |\n|---|---|---|")
    for key, what in (("header_s", "CSV header"), ("first_row_s", "first data row"), ("total_s", "process end")):
        print(f"| {what} | {result[key]['median']:.2f} s | {result[key]['min']:.2f} s |")
    print(f"| (python -c pass) | {result['python_start_s']:.2f} s | |")
    if a.breakdown:
        opts = {}
        for flag, key in (("--precision", "precision"), ("--backend", "backend"), ("--device", "device"),
                          ("--bundle", "bundle")):
            if flag in extra:
                opts[key] = extra[extra.index(flag) + 1]
        try:
            result["breakdown"] = breakdown(a.clip, opts)
        except RuntimeError as exc:
            print(f"first_row: error: breakdown failed: {exc}", file=sys.stderr)
            return 2
        print("\nin one process, seconds since start (wall / CPU): " +
              ", ".join(f"{k} {w:.2f} / {c:.2f}" for k, (w, c) in result["breakdown"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
