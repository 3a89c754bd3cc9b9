"""Memory stays flat however long the video: process a long video and sample the resident set size.

    python benchmarks/memory_soak.py VIDEO [--loops 10] [--bundle default] [--every 1]

Plays VIDEO ``--loops`` times back to back (a long input without a long file), writing the CSV and the summary like
`rtfer analyze` does, and prints RSS every ``--sample`` frames plus the growth after the warm-up window.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import psutil

from rtfer.capture import open_source
from rtfer.pipeline import AnalyzeOptions, Pipeline
from rtfer.sinks import CSVSink, SummarySink
from rtfer.types import Frame

log = logging.getLogger(__name__)


class LoopedSource:
    """Plays a video file ``loops`` times with continuous frame indices and timestamps."""

    kind = "video"
    live = False

    def __init__(self, path: str, loops: int) -> None:
        self.path, self.loops = path, loops
        with open_source(path) as src:
            self.fps, self.width, self.height = src.fps, src.width, src.height
            self.frame_count = (src.frame_count or 0) * loops or None
        self.name, self.warnings, self.dropped, self.duration_s = Path(path).name, [], 0, None
        self._it = self._frames()
        self._src = None

    def _frames(self):
        index, offset = 0, 0.0
        for _ in range(self.loops):
            last = 0.0
            with open_source(self.path) as src:
                self._src = src
                for f in src:
                    last = f.time_s
                    yield Frame(index, offset + f.time_s, f.image, self.name)
                    index += 1
            offset += last + 1.0 / (self.fps or 25.0)

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        return next(self._it)

    def close(self) -> None:
        self._it.close()


def soak(video: str, options: AnalyzeOptions, loops: int, sample: int = 100, warmup: int = 100) -> dict:
    """Run the pipeline over ``loops`` plays of ``video``; return RSS samples (MiB) and the growth after warm-up."""
    proc = psutil.Process(os.getpid())
    pipe = Pipeline(options)
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, CSVSink(Path(tmp) / "soak.csv") as csv_sink, \
            SummarySink(Path(tmp) / "soak.png") as summary:
        n = 0
        for result in pipe.run(LoopedSource(video, loops)):
            csv_sink.append(result)
            summary.append(result)
            n += 1
            if n % sample == 0:
                samples.append((n, proc.memory_info().rss / 2**20))
    after = [m for i, m in samples if i >= warmup]
    growth = (after[-1] - after[0]) if len(after) >= 2 else 0.0
    return {"frames": n, "seconds": time.perf_counter() - t0, "samples": samples, "growth_mib": growth,
            "peak_mib": max((m for _, m in samples), default=0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--loops", type=int, default=10)
    p.add_argument("--bundle", default="default")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--sample", type=int, default=100)
    p.add_argument("--warmup", type=int, default=100, help="frames before the growth is measured")
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    r = soak(args.video, AnalyzeOptions(bundle=args.bundle, backend=args.backend, every=args.every), args.loops,
             args.sample, args.warmup)
    if args.json:
        print(json.dumps(r))
        return
    for i, m in itertools.islice(r["samples"], 0, None, max(1, len(r["samples"]) // 20)):
        print(f"frame {i:>7}: RSS {m:8.1f} MiB")
    print(f"{r['frames']} frames in {r['seconds']:.0f} s; RSS growth after warm-up {r['growth_mib']:+.1f} MiB, "
          f"peak {r['peak_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
