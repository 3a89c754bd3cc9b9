"""`rtfer bench`: where the time goes on a given video.

Three measurements on the same input: decoding alone, the whole pipeline (with per-stage means), and the CSV
write cost. Stages run on different threads and overlap, so the per-stage means add up to more than the wall time
per frame; the end-to-end frames/s is the figure that counts, and the real-time factor compares it with the
video's own frame rate.
"""
from __future__ import annotations

import itertools
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rtfer.pipeline import STAGES, AnalyzeOptions, Pipeline

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    input: str
    frames: int
    video_fps: float | None
    width: int
    height: int
    faces_per_frame: float
    load_s: float
    decode_fps: float
    e2e_fps: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    describe: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float | None:
        return self.e2e_fps / self.video_fps if self.video_fps else None

    def to_dict(self) -> dict:
        from rtfer.sinks.atomic import MARK

        d = asdict(self)
        d["realtime_factor"] = self.realtime_factor
        d["generator"] = MARK  # a later run may replace this file (rtfer.sinks.atomic.written_by_rtfer)
        return d

    def table(self) -> str:
        lines = [
            f"input: {self.input} ({self.width}x{self.height}"
            + (f", {self.video_fps:.2f} fps" if self.video_fps else "") + ")",
            f"model: {self.describe.get('bundle')} on {self.describe.get('backend')}/{self.describe.get('device')}, "
            f"detector {self.describe.get('detector')}, every {self.options.get('every')}",
            f"frames: {self.frames}, faces per frame: {self.faces_per_frame:.2f}, model load: {self.load_s:.2f} s",
            "",
            f"{'stage':<10}{'ms/frame':>10}",
        ]
        for k in (*STAGES, "write"):
            lines.append(f"{k:<10}{self.stage_ms.get(k, 0.0):>10.2f}")
        lines += [
            "",
            f"decode only: {self.decode_fps:.1f} frames/s",
            f"end to end:  {self.e2e_fps:.1f} frames/s"
            + (f"  ({self.realtime_factor:.2f}x real time)" if self.realtime_factor else ""),
        ]
        return "\n".join(lines)


def decode_fps(spec, max_frames: int) -> tuple[float, int]:
    from rtfer.capture import open_source

    with open_source(spec) as src:
        t0 = time.perf_counter()
        n = sum(1 for _ in itertools.islice(src, max_frames))
        dt = time.perf_counter() - t0
    return (n / dt if dt > 0 else 0.0), n


def run_bench(spec, options: AnalyzeOptions | None = None, max_frames: int = 300) -> BenchResult:
    """Decode-only speed, then the whole run (the run layer, as ``rtfer analyze`` runs it: same source policy, CSV
    written on the writer thread) over the first ``max_frames`` frames."""
    from rtfer.run import Run, open_input
    from rtfer.sinks import CSVSink

    options = options or AnalyzeOptions()
    dec_fps, _ = decode_fps(spec, max_frames)
    t0 = time.perf_counter()
    pipe = Pipeline(options)
    pipe.bundle.warmup((1, 4))
    load_s = time.perf_counter() - t0
    src = open_input(spec, prefetch=options.prefetch, drop_frames=options.realtime)
    video_fps, width, height = src.fps, src.width, src.height
    with tempfile.TemporaryDirectory() as tmp, CSVSink(Path(tmp) / "bench.csv") as sink:
        stats = Run(pipe, src, sinks=[sink], max_frames=max_frames).execute()
    n = stats.frames
    return BenchResult(input=str(spec), frames=n, video_fps=video_fps, width=width or 0, height=height or 0,
                       faces_per_frame=stats.faces / max(n, 1), load_s=load_s, decode_fps=dec_fps,
                       e2e_fps=stats.fps, stage_ms=stats.stage_ms, describe=pipe.describe(),
                       options=asdict(options))
