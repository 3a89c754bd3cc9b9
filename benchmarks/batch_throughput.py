"""Batch throughput: videos/hour and frames/s for 1 and N worker processes and for Ray on a local instance.

    python benchmarks/batch_throughput.py --videos 8 [--source VIDEO] [--bundle default] [--workers 1,2]
                                          [--ray-cpus 2 | --no-ray] [--json results.json]

The input is N symlinked copies of one video (default: the first fixture video in ../shared/fixtures/videos, else a
video panned across insightface's group photo). Each configuration runs the full batch (pipeline start-up per
worker included) into a fresh output folder. With ``--bundle default`` missing, a bundle of the same architectures
with random weights is exported (torch needed; the compute is the same, the predictions meaningless) and the table
says so.

It also measures what decides "N pipelines vs one shared inference process": the per-frame stage times of one
video (how much of a frame is inference) and the per-face cost of the bundle at batch sizes 1, 8 and 32 (how much
batching across videos would save).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("RTFER_SHARED", REPO.parent / "shared")) / "fixtures" / "videos"

log = logging.getLogger("batch_throughput")


def make_source(work: Path, frames: int) -> Path:
    """A fixture video if ../shared is present, else a pan across the group photo."""
    if FIXTURES.is_dir():
        videos = sorted(FIXTURES.glob("*.mp4"))
        if videos:
            return videos[0]
    import importlib.util

    import cv2

    from media_helpers import write_test_video

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no ../shared fixture videos and no insightface group photo: pass --source VIDEO")
    photo = cv2.imread(str(Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"))
    h, w = photo.shape[:2]
    pan = [photo[:, min(w - 640, i * 4):min(w - 640, i * 4) + 640] for i in range(frames)]
    return write_test_video(work / "group_pan.mp4", pan, fps=25)


def clip(source: Path, frames: int, work: Path) -> Path:
    """The first ``frames`` frames of ``source`` re-encoded (shorter copies keep a benchmark run short)."""
    import av

    from media_helpers import write_test_video

    with av.open(str(source)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate or 25)
        images = []
        for frame in c.decode(stream):
            images.append(frame.to_ndarray(format="bgr24"))
            if len(images) >= frames:
                break
    return write_test_video(work / f"{source.stem}_{len(images)}f.mp4", images, fps=rate)


def random_bundle(work: Path, archs: list[str]) -> Path:
    """A bundle of randomly initialised members of the given architectures (same compute as trained ones)."""
    import torch

    from rtfer.models import create_model
    from rtfer.training.export import write_bundle

    torch.manual_seed(0)
    members = []
    for i, spec in enumerate(archs):  # "name" or "name@input_size"
        name, _, size = spec.partition("@")
        kwargs = {"input_size": int(size)} if size else {}
        members.append({"model": create_model(name, **kwargs).eval(), "name": f"m{i}_{name}"})
    return write_bundle(work / "random_bundle", members,
                        {"method": "soft_vote", "weights": [1.0 / len(archs)] * len(archs)},
                        name="random-" + "+".join(archs), version="0", interim=True)


def resolve_bundle(name: str, work: Path, archs: list[str]) -> tuple[str, str]:
    """(bundle path or name, label) — a random-weights bundle of ``archs`` only when the default is missing."""
    from rtfer.bundle import resolve_bundle_path
    from rtfer.errors import BundleError

    try:
        return str(resolve_bundle_path(name)), name
    except BundleError:
        if name != "default":
            raise
        log.warning("the default bundle is missing: using random weights in %s", " + ".join(archs))
        return str(random_bundle(work, archs)), f"random weights, {' + '.join(archs)} (default bundle missing)"


def stage_profile(source: Path, options) -> dict:
    """Per-frame stage times (ms) of one in-process run, and the bundle's per-face cost by batch size."""
    from rtfer.pipeline import Pipeline
    from rtfer.run import process_file

    pipe = Pipeline(options)
    with tempfile.TemporaryDirectory() as tmp:
        stats = process_file(source, Path(tmp) / "profile.csv", options, pipeline=pipe)
    sizes = pipe.bundle.input_sizes
    crops = np.random.default_rng(0).integers(0, 255, (32, max(sizes), max(sizes), 3), dtype=np.uint8)
    per_face = {}
    for n in (1, 8, 32):
        pipe.bundle.predict(crops[:n])  # warm
        reps = max(2, 64 // n)
        t0 = time.perf_counter()
        for _ in range(reps):
            pipe.bundle.predict(crops[:n])
        per_face[n] = (time.perf_counter() - t0) * 1e3 / (reps * n)
    return {"stage_ms": {k: round(v, 2) for k, v in stats.stage_ms.items()},
            "faces_per_frame": stats.faces / max(stats.frames, 1), "fps_1proc": stats.fps,
            "infer_ms_per_face_by_batch": {k: round(v, 3) for k, v in per_face.items()},
            "describe": pipe.describe()}


def run_config(label: str, inputs: Path, out: Path, options, **kwargs) -> dict:
    from rtfer.batch import run_batch

    before = _cpu_seconds()
    s = run_batch([str(inputs)], out, options, overwrite=True, progress=False, **kwargs)
    cpu = _cpu_seconds() - before
    if s.videos_failed:
        raise SystemExit(f"{label}: {s.videos_failed} videos failed: {s.failures[0]}")
    # CPU seconds per frame is the load-independent cost (this machine is shared); Ray's workers are not our
    # children, so their CPU time is not visible here.
    return {"config": label, "parallel": s.workers, "videos": s.videos_done, "frames": s.frames,
            "wall_s": round(s.wall_seconds, 2), "videos_per_hour": round(s.videos_per_hour),
            "frames_per_s": round(s.frames_per_s, 1),
            "cpu_ms_per_frame": None if "ray_address" in kwargs else round(cpu * 1e3 / max(s.frames, 1), 1)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (pool workers, once the pool is shut down)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8, help="number of copies of the source video (default 8)")
    ap.add_argument("--source", type=Path, help="the video to copy (default: a fixture video or a group-photo pan)")
    ap.add_argument("--frames", type=int, default=60, help="frames of the group-photo pan when there is no fixture")
    ap.add_argument("--clip-frames", type=int, default=0, help="use only the first N frames of the source")
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--random-archs", default="ddamfn@48,convnextv2_atto@64",
                    help="ARCH[@SIZE],... of the random-weights bundle used when the default bundle is missing "
                         "(default: those of the interim default bundle; the full recipe is "
                         "ddamfn@112,convnextv2_tiny@224)")
    ap.add_argument("--batch-frames", type=int, default=8, help="frames per inference call in each pipeline")
    ap.add_argument("--profile-only", action="store_true", help="only the stage / batch-size profile")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts for the process pool")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the stage / batch-size profile")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))  # media_helpers: test-video writer (test code stays out of the package)

    from rtfer.pipeline import AnalyzeOptions

    with tempfile.TemporaryDirectory(prefix="rtfer-batch-bench-") as tmp:
        work = Path(tmp)
        source = (args.source or make_source(work, args.frames)).resolve()
        if args.clip_frames:
            source = clip(source, args.clip_frames, work)
        bundle, bundle_label = resolve_bundle(args.bundle, work, args.random_archs.split(","))
        options = AnalyzeOptions(bundle=bundle, backend=args.backend, device=args.device,
                                 batch_frames=args.batch_frames)
        inputs = work / "inputs"
        inputs.mkdir()
        for i in range(args.videos):
            (inputs / f"copy{i:03d}{source.suffix}").symlink_to(source)
        results: dict = {"source": str(source), "copies": args.videos, "bundle": bundle_label,
                         "batch_frames": args.batch_frames,
                         "cpus": os.cpu_count(), "runs": [], "load": [os.getloadavg()[0]]}
        if not args.no_profile:
            results["profile"] = stage_profile(source, options)
        for n in ([] if args.profile_only else [int(x) for x in args.workers.split(",")]):
            label = "in-process" if n == 1 else f"pool x{n}"
            results["runs"].append(run_config(label, inputs, work / f"out{n}", options, workers=n))
        if not (args.no_ray or args.profile_only):
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            results["ray_init_s"] = round(time.perf_counter() - t0, 2)
            try:
                results["runs"].append(run_config(f"ray local ({args.ray_cpus} CPUs)", inputs, work / "out_ray",
                                                  options, ray_address="auto", ray_num_cpus=1))
            finally:
                ray.shutdown()
    results["load"].append(os.getloadavg()[0])
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict) -> str:
    lines = [f"source: {results['source']} x {results['copies']} copies; bundle: {results['bundle']}; "
             f"batch_frames {results['batch_frames']}; {results['cpus']} CPUs; "
             f"load average before/after: {results['load'][0]:.1f} / {results['load'][1]:.1f}"]
    if "profile" in results:
        p = results["profile"]
        stages = ", ".join(f"{k} {v}" for k, v in p["stage_ms"].items() if v)
        lines.append(f"one process: {p['fps_1proc']:.1f} frames/s, {p['faces_per_frame']:.1f} faces/frame; "
                     f"mean ms per frame: {stages}")
        lines.append("bundle ms per face at batch 1/8/32: "
                     + " / ".join(f"{v}" for v in p["infer_ms_per_face_by_batch"].values())
                     + f"  ({p['describe']['backend']} on {p['describe']['device']})")
    head = (f"{'config':<22}{'parallel':>9}{'videos':>8}{'frames':>8}{'wall s':>9}{'videos/h':>10}{'frames/s':>10}"
            f"{'CPU ms/frame':>14}")
    lines += [head, "-" * len(head)]
    for r in results["runs"]:
        cpu = "n/a" if r["cpu_ms_per_frame"] is None else r["cpu_ms_per_frame"]
        lines.append(f"{r['config']:<22}{r['parallel']:>9}{r['videos']:>8}{r['frames']:>8}{r['wall_s']:>9}"
                     f"{r['videos_per_hour']:>10}{r['frames_per_s']:>10}{cpu:>14}")
    if "ray_init_s" in results:
        lines.append(f"(ray.init of the local instance: {results['ray_init_s']} s, not included above)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
