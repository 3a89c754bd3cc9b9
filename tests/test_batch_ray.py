"""Batch mode on Ray: a local 2-CPU instance runs the per-video tasks; the driver writes the manifest."""
from __future__ import annotations

import time

import pytest

from rtfer.batch import run_batch
from rtfer.pipeline import AnalyzeOptions

from test_batch import _check_real_outputs, _read_manifest, short_videos  # noqa: F401 (a fixture)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local instance with 2 CPUs for this module (starting one takes 5-10 s here)."""
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


@pytest.mark.slow
def test_ray_failing_video_is_one_row_and_the_rest_finish(tmp_path, tiny_bundle, short_videos, local_ray):
    root = tmp_path / "in"
    root.mkdir()
    for rel in ("a.mp4", "b.mp4"):
        (root / rel).symlink_to(short_videos / rel)
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 20)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, AnalyzeOptions(bundle=str(tiny_bundle), backend="onnxruntime", device="cpu"),
                  ray_address="auto", progress=False)
    assert (s.videos_ok, s.videos_failed, s.exit_code) == (2, 1, 1)
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in _read_manifest(out / "manifest.csv")}
    assert rows["broken.mp4"]["status"] == "failed" and rows["broken.mp4"]["error"]
    assert rows["a.mp4"]["status"] == rows["b.mp4"]["status"] == "ok"
    assert (out / "a.csv").is_file() and not (out / "broken.csv").exists()
