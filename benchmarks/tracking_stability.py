"""ID stability of the face tracker on a video (default: the 6-face classroom fixture).

Runs detection and tracking exactly as ``rtfer analyze`` does (the bundle's detector, ``--every N`` with optical
flow between detections, no classifier) and prints:

- ``ids``: track IDs handed out; ``ids_0.5s``: IDs that last >= 0.5 s (from first to last frame seen);
- ``per_person``: ``ids_0.5s`` / persons (``--persons``, default: the 90th percentile of faces per frame);
- ``jumps``: frames where an ID's box centre moves by more than half its width from one output to the next (at
  most ``--every`` frames apart; an ID handed from one face to another: a swap, as far as it can be measured
  without ground truth);
- ``carried``: face rows not confirmed by a detection for more than ``--every`` frames (boxes carried by flow or
  kept through misses) and ``carried_max``: the longest such run in frames;
- ``rows``: face rows written.

    python benchmarks/tracking_stability.py                          # the 6- and 4-face classrooms, the portrait
    python benchmarks/tracking_stability.py VIDEO --every 1 --persons 10 --json out.json

Without ``--persons`` the fixture clips use the people counted by eye (``tracker_compare.PERSONS``).
Side by side with other trackers on the same detections: ``benchmarks/tracker_compare.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "videos"
DEFAULT_VIDEO = _FIXTURES / "unlabeled_george210843_classroom_6faces.mp4"
DEFAULT_VIDEOS = (DEFAULT_VIDEO, _FIXTURES / "unlabeled_george210843_classroom_4faces.mp4",
                  _FIXTURES / "unlabeled_kameshpravin_grayscale_portrait_01.mp4")


def track_video(video: str | Path, *, every: int = 3, bundle: str = "default", detector=None,
                tracker=None, max_frames: int | None = None) -> list[tuple[int, float, np.ndarray, np.ndarray, np.ndarray]]:
    """(frame index, time, track ids, boxes, confirmed) per frame, tracked as the pipeline's front thread does."""
    from rtfer.capture import open_source
    from rtfer.tracking import Tracker

    if detector is None:
        from rtfer.bundle import BundleSpec, resolve_bundle_path
        from rtfer.detection import create_detector
        from rtfer.pipeline import resolve_detector

        spec = BundleSpec.read(resolve_bundle_path(bundle))
        detector = create_detector(resolve_detector("auto", spec), device="cpu", allow_fallback=True)
    tracker = tracker or Tracker()
    out = []
    with open_source(str(video)) as src:
        for n, frame in enumerate(src):
            if max_frames is not None and n >= max_frames:
                break
            if n % every == 0:
                faces = tracker.update(detector.detect(frame.image), frame.index, image_bgr=frame.image)
                confirmed = np.ones(len(faces), bool)
            else:
                faces = tracker.propagate(frame.image, frame.index)
                confirmed = np.zeros(len(faces), bool)
            out.append((frame.index, frame.time_s, faces.track_ids.copy(), faces.xyxy.copy(), confirmed))
    return out


def id_stats(frames, *, every: int = 3, persons: float | None = None, min_s: float = 0.5) -> dict:
    """The figures listed in the module docstring for the output of :func:`track_video`."""
    span: dict[int, list[float]] = {}
    last_box: dict[int, tuple[int, np.ndarray]] = {}
    last_conf: dict[int, int] = {}
    jumps = carried = carried_max = rows = 0
    run: dict[int, int] = defaultdict(int)
    counts = []
    for idx, t, ids, boxes, confirmed in frames:
        counts.append(len(ids))
        rows += len(ids)
        for tid, box, conf in zip(ids.tolist(), boxes, confirmed):
            s = span.setdefault(tid, [t, t])
            s[1] = t
            prev = last_box.get(tid)
            if prev is not None and idx - every <= prev[0] < idx:  # consecutive outputs (trackers that output
                # only on detection frames are compared across the detection step)
                c0, c1 = (prev[1][:2] + prev[1][2:]) / 2, (box[:2] + box[2:]) / 2
                if np.linalg.norm(c1 - c0) > 0.5 * max(prev[1][2] - prev[1][0], 1.0):
                    jumps += 1
            last_box[tid] = (idx, box)
            if conf:
                last_conf[tid] = idx
            if idx - last_conf.get(tid, idx) > every:
                carried += 1
                run[tid] += 1
                carried_max = max(carried_max, run[tid])
            else:
                run[tid] = 0
    persons = persons or float(max(1, round(np.percentile(counts, 90)))) if counts else 1.0
    lasting = sum(1 for a, b in span.values() if b - a >= min_s)
    return {"frames": len(frames), "persons": persons, "ids": len(span), "ids_0.5s": lasting,
            "per_person": lasting / persons, "jumps": jumps, "carried": carried, "carried_max": carried_max,
            "rows": rows, "max_faces": max(counts) if counts else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="*", default=[str(v) for v in DEFAULT_VIDEOS])
    ap.add_argument("--every", type=int, default=3, help="detect every N frames (default 3, as rtfer analyze)")
    ap.add_argument("--persons", type=float, default=None, help="people in the clip (default: estimated)")
    ap.add_argument("--bundle", default="default", help="bundle whose detector to use")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tracker_compare import PERSONS

    everything = {}
    for video in a.video:
        persons = a.persons if a.persons is not None else PERSONS.get(Path(video).stem)
        stats = id_stats(track_video(video, every=a.every, bundle=a.bundle), every=a.every, persons=persons)
        everything[Path(video).name] = stats
        print(f"# {Path(video).name}, --every {a.every}")
        for k, v in stats.items():
            print(f"{k:12s} {v:.2f}" if isinstance(v, float) else f"{k:12s} {v}")
    if a.json:
        out = everything if len(everything) != 1 else next(iter(everything.values()))
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
