"""What the live outputs cost: frames/s of a video with ``--lsl --serve`` (and clients on them) vs without.

    python benchmarks/live_overhead.py [VIDEO] [--repeats 3] [--bundle default] [--json OUT.json]

One pipeline (loaded once) analyses VIDEO (default: the 6-face classroom fixture) into a CSV, alternately without
live outputs ("off") and with an LSL outlet and the live server ("live"), in the order off, live, live, off, ... so
that a drift of the machine's load falls on both alike. During the "live" runs a separate client process reads
everything a real audience would: a WebSocket client reads every message, an LSL inlet pulls every sample, and the
page's frame poll fetches ``/frame.jpg`` four times a second (the live page's rate). Prints frames/s per run, the
median of each, and the slowdown; and, since wall-clock frames/s swing with whatever else the machine runs, the
process's CPU time per frame (all its threads: pipeline, writer, server, JPEG encoding), whose difference is the
live outputs' cost whatever the load. Not a timed test: run it by hand (the figures belong in the README).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

DEFAULT_VIDEO = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "videos"
                 / "unlabeled_george210843_classroom_6faces.mp4")


def client(url: str, lsl_name: str, seconds: float) -> dict:
    """The audience: a WebSocket reader, an LSL inlet and a 4 Hz frame poll, for ``seconds``; returns counts."""
    import aiohttp
    import pylsl

    counts = {"ws_frames": 0, "lsl_samples": 0, "jpegs": 0, "jpeg_bytes": 0}
    found = pylsl.resolve_byprop("name", lsl_name, timeout=30)
    inlet = pylsl.StreamInlet(found[0])
    inlet.open_stream(timeout=10)

    async def main() -> None:
        deadline = time.monotonic() + seconds
        last_frame = [0.0]
        async with aiohttp.ClientSession() as session:
            async def ws_reader() -> None:
                async with session.ws_connect(url.replace("http", "ws") + "ws") as ws:
                    async for msg in ws:
                        if json.loads(msg.data)["type"] == "frame":
                            counts["ws_frames"] += 1
                            last_frame[0] = time.monotonic()

            async def jpeg_poll() -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                    if time.monotonic() - last_frame[0] < 0.5:  # the page polls while frames come
                        async with session.get(url + "frame.jpg") as r:
                            body = await r.read()
                        counts["jpegs"] += r.status == 200
                        counts["jpeg_bytes"] += len(body)

            async def lsl_pull() -> None:
                while time.monotonic() < deadline:
                    chunk, _ = inlet.pull_chunk(timeout=0.0)
                    counts["lsl_samples"] += len(chunk)
                    await asyncio.sleep(0.05)

            reader = asyncio.ensure_future(ws_reader())
            await asyncio.gather(jpeg_poll(), lsl_pull())
            reader.cancel()

    asyncio.run(main())
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("video", nargs="?", default=str(DEFAULT_VIDEO))
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    p.add_argument("--bundle", default="default")
    p.add_argument("--json", type=Path)
    p.add_argument("--client", nargs=3, metavar=("URL", "LSL_NAME", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        print(json.dumps(client(args.client[0], args.client[1], float(args.client[2]))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from rtfer.live.lsl import LSLSink
    from rtfer.live.server import LiveServer
    from rtfer.pipeline import AnalyzeOptions, Pipeline
    from rtfer.run import OutputPlan, Run

    pipeline = Pipeline(AnalyzeOptions(bundle=args.bundle))
    out = Path(tempfile.mkdtemp(prefix="rtfer-live-overhead-"))
    lsl_name = f"rtfer-bench-{uuid.uuid4().hex[:6]}"
    Run(pipeline, args.video, max_frames=30).execute()  # warm-up
    fps: dict[str, list[float]] = {"off": [], "live": []}
    cpu_ms: dict[str, list[float]] = {"off": [], "live": []}  # process CPU time per frame
    import psutil

    me = psutil.Process()
    clients = []
    order = [m for i in range(args.repeats) for m in (("off", "live") if i % 2 == 0 else ("live", "off"))]
    with LiveServer("127.0.0.1", 0) as server, LSLSink(lsl_name) as lsl:
        spec = pipeline.bundle.spec  # the outlet exists before the runs, so that the client connects beforehand
        lsl.run_started({"source": "(benchmark set-up)", "bundle_name": spec.name, "bundle_version": spec.version})
        proc = subprocess.Popen([sys.executable, __file__, "--client", server.url, lsl_name, "3600"],
                                stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (server.stats()["clients"] and lsl._outlet.have_consumers()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the client process did not connect")
            time.sleep(0.1)
        try:
            for i, mode in enumerate(order):
                sinks = [server, lsl] if mode == "live" else []
                cpu0 = sum(me.cpu_times()[:2])
                stats = Run(pipeline, args.video, plan=OutputPlan(args.video, csv=str(out / f"run{i}.csv")),
                            sinks=sinks).execute()
                fps[mode].append(stats.fps)
                cpu_ms[mode].append((sum(me.cpu_times()[:2]) - cpu0) * 1e3 / max(stats.frames, 1))
                time.sleep(1.0)  # the client's frame poll stops before the next run
                print(f"run {i + 1}/{len(order)} {mode:>4}: {stats.frames} frames, {stats.fps:.2f} frames/s, "
                      f"CPU {cpu_ms[mode][-1]:.1f} ms per frame"
                      + (f"; so far: server {server.stats()['published']} messages, {server.jpegs} JPEGs, LSL "
                         f"{lsl.samples} samples" if mode == "live" else ""), flush=True)
            clients.append(server.stats())
        finally:
            proc.terminate()
            proc.wait(30)
    off, live = statistics.median(fps["off"]), statistics.median(fps["live"])
    slowdown = (off - live) / off * 100
    c_off, c_live = statistics.median(cpu_ms["off"]), statistics.median(cpu_ms["live"])
    extra = (c_live - c_off) / c_off * 100
    print(f"\nmedian frames/s: off {off:.2f}, live {live:.2f}: {slowdown:+.1f}% slower with --lsl --serve "
          f"(goal <= 5%)\nmedian CPU per frame: off {c_off:.1f} ms, live {c_live:.1f} ms: {extra:+.1f}% CPU")
    if args.json:
        args.json.write_text(json.dumps({"video": args.video, "fps": fps, "median_off": off, "median_live": live,
                                         "slowdown_percent": slowdown, "cpu_ms_per_frame": cpu_ms,
                                         "cpu_extra_percent": extra, "server": clients[-1]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
