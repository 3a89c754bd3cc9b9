"""Memory stays flat on long inputs: a looped video through the full pipeline and sinks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory_soak import soak  # noqa: E402

from rtfer.pipeline import AnalyzeOptions  # noqa: E402


@pytest.mark.slow
def test_rss_does_not_grow_with_video_length(tiny_bundle, group_video):
    # 24-frame clip x 16 = 384 frames; RSS sampled every 32 frames after a 96-frame warm-up
    r = soak(str(group_video), AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu",
                                              every=3), loops=16, sample=32, warmup=96)
    assert r["frames"] == 384
    assert r["growth_mib"] < 20, r["samples"]
