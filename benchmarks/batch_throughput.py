"""Batch throughput: videos/hour and frames/s for 1 and N worker processes and for Ray on a local instance.

    python benchmarks/batch_throughput.py --videos 8 [--source VIDEO] [--bundle default] [--workers 1,2]
                                          [--ray-cpus 2 | --no-ray] [--json results.json]

The input is N symlinked copies of one video (default: the first fixture video in ../shared/fixtures/videos, else a
video panned across insightface's group photo). Each configuration runs the full batch (pipeline start-up per
worker included) into a fresh output folder. With ``--bundle default`` missing, a tiny random bundle is exported
(torch needed) and the table says so: figures then measure decoding/detection/orchestration more than the models.

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

    from rtfer.capture import write_test_video

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no ../shared fixture videos and no insightface group photo: pass --source VIDEO")
    photo = cv2.imread(str(Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"))
    h, w = photo.shape[:2]
    pan = [photo[:, min(w - 640, i * 4):min(w - 640, i * 4) + 640] for i in range(frames)]
    return write_test_video(work / "group_pan.mp4", pan, fps=25)


def tiny_bundle(work: Path) -> Path:
    import torch

    from rtfer.models import create_model
    from training.export import write_bundle

    torch.manual_seed(0)
    return write_bundle(work / "tiny_bundle", [{"model": create_model("ddamfn_tiny").eval(), "name": "ddamfn"},
                                               {"model": create_model("convnextv2_test").eval(), "name": "convnext"}],
                        {"method": "soft_vote", "weights": [0.5, 0.5]}, name="tiny-random", version="0",
                        interim=True)


def resolve_bundle(name: str, work: Path) -> tuple[str, str]:
    """(bundle path or name, label) — falls back to a tiny random bundle only when the default is missing."""
    from rtfer.bundle import resolve_bundle_path
    from rtfer.errors import BundleError

    try:
        return str(resolve_bundle_path(name)), name
    except BundleError:
        if name != "default":
            raise
        log.warning("the default bundle is missing: using a tiny random bundle (ddamfn_tiny + convnextv2_test)")
        return str(tiny_bundle(work)), "tiny random (default bundle missing)"


def stage_profile(source: Path, options) -> dict:
    """Per-frame stage times (ms) of one in-process run, and the bundle's per-face cost by batch size."""
    from rtfer.pipeline import Pipeline, process_file

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

    s = run_batch([str(inputs)], out, options, overwrite=True, progress=False, **kwargs)
    if s.videos_failed:
        raise SystemExit(f"{label}: {s.videos_failed} videos failed: {s.failures[0]}")
    return {"config": label, "parallel": s.workers, "videos": s.videos_done, "frames": s.frames,
            "wall_s": round(s.wall_seconds, 2), "videos_per_hour": round(s.videos_per_hour),
            "frames_per_s": round(s.frames_per_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8, help="number of copies of the source video (default 8)")
    ap.add_argument("--source", type=Path, help="the video to copy (default: a fixture video or a group-photo pan)")
    ap.add_argument("--frames", type=int, default=60, help="frames of the group-photo pan when there is no fixture")
    ap.add_argument("--bundle", default="default")
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

    from rtfer.pipeline import AnalyzeOptions

    with tempfile.TemporaryDirectory(prefix="rtfer-batch-bench-") as tmp:
        work = Path(tmp)
        source = (args.source or make_source(work, args.frames)).resolve()
        bundle, bundle_label = resolve_bundle(args.bundle, work)
        options = AnalyzeOptions(bundle=bundle, backend=args.backend, device=args.device)
        inputs = work / "inputs"
        inputs.mkdir()
        for i in range(args.videos):
            (inputs / f"copy{i:03d}{source.suffix}").symlink_to(source)
        results: dict = {"source": str(source), "copies": args.videos, "bundle": bundle_label,
                         "cpus": os.cpu_count(), "runs": []}
        if not args.no_profile:
            results["profile"] = stage_profile(source, options)
        for n in (int(x) for x in args.workers.split(",")):
            label = "in-process" if n == 1 else f"pool x{n}"
            results["runs"].append(run_config(label, inputs, work / f"out{n}", options, workers=n))
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            results["ray_init_s"] = round(time.perf_counter() - t0, 2)
            try:
                results["runs"].append(run_config(f"ray local ({args.ray_cpus} CPUs)", inputs, work / "out_ray",
                                                  options, ray_address="auto", ray_num_cpus=1))
            finally:
                ray.shutdown()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict) -> str:
    lines = [f"source: {results['source']} x {results['copies']} copies; bundle: {results['bundle']}; "
             f"{results['cpus']} CPUs"]
    if "profile" in results:
        p = results["profile"]
        stages = ", ".join(f"{k} {v}" for k, v in p["stage_ms"].items() if v)
        lines.append(f"one process: {p['fps_1proc']:.1f} frames/s, {p['faces_per_frame']:.1f} faces/frame; "
                     f"mean ms per frame: {stages}")
        lines.append("bundle ms per face at batch 1/8/32: "
                     + " / ".join(f"{v}" for v in p["infer_ms_per_face_by_batch"].values())
                     + f"  ({p['describe']['backend']} on {p['describe']['device']})")
    head = f"{'config':<22}{'parallel':>9}{'videos':>8}{'frames':>8}{'wall s':>9}{'videos/h':>10}{'frames/s':>10}"
    lines += [head, "-" * len(head)]
    for r in results["runs"]:
        lines.append(f"{r['config']:<22}{r['parallel']:>9}{r['videos']:>8}{r['frames']:>8}{r['wall_s']:>9}"
                     f"{r['videos_per_hour']:>10}{r['frames_per_s']:>10}")
    if "ray_init_s" in results:
        lines.append(f"(ray.init of the local instance: {results['ray_init_s']} s, not included above)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
