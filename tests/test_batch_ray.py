"""Batch mode on Ray: a local 2-CPU instance runs the per-video tasks; the driver writes the manifest."""
from __future__ import annotations

import time

import pytest

from rtfer.batch import run_batch
from rtfer.pipeline import AnalyzeOptions

from test_batch import _check_real_outputs, _read_manifest, short_videos, tiny_bundle  # noqa: F401 (fixtures)

ray = pytest.importorskip("ray")


@pytest.fixture()
def local_ray():
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_local_instance_processes_videos_and_resumes(tmp_path, tiny_bundle, short_videos, local_ray):
    options = AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu")
    out = tmp_path / "out"
    s = run_batch([str(short_videos)], out, options, ray_address="auto", progress=False)
    assert s.executor.startswith("ray") and s.workers == 2
    _check_real_outputs(out, s)
    assert ray.is_initialized(), "an instance the caller started is left running"
    # resume through Ray: nothing to do; after deleting one output only that video is redone
    (out / "b.csv").unlink()
    s = run_batch([str(short_videos)], out, options, ray_address="auto", progress=False)
    assert (s.videos_ok, s.videos_skipped) == (1, 2)
    rows = _read_manifest(out / "manifest.csv")
    assert len(rows) == 4 and rows[-1]["input"].endswith("b.mp4") and rows[-1]["status"] == "ok"
