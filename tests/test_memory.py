"""Memory stays flat on long inputs: a looped video through the full pipeline and sinks, in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_soak.py"


@pytest.mark.slow
def test_rss_does_not_grow_with_video_length(tiny_bundle, group_video):
    # 24-frame clip x 16 = 384 frames; RSS sampled every 32 frames after a 96-frame warm-up. A pipeline that kept
    # frames (480x334x3 bytes each) would grow by ~130 MiB over the measured 288 frames.
    out = subprocess.run([sys.executable, str(SCRIPT), str(group_video), "--loops", "16", "--bundle", str(tiny_bundle),
                          "--backend", "onnxruntime", "--every", "3", "--sample", "32", "--warmup", "96", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["frames"] == 384
    assert r["growth_mib"] < 20, r["samples"]
