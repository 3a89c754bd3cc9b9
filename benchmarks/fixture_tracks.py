"""Per-frame raw classifications of every tracked face on the fixture clips, cached for the offline benchmarks.

Runs the pipeline once per clip with default detection and tracking, classifying every face on every frame and
smoothing nothing, and saves one ``.npz`` per clip (frame, time, track id, box, detector score, raw probabilities per
face row). ``benchmarks/classify_rate.py`` and ``benchmarks/smoothing_stability.py --fixtures`` replay these rows
through the smoothers and the per-track classification rate, so re-tuning a default needs no model run at all.

    python benchmarks/fixture_tracks.py                       # default bundle -> ~/.cache/rtfer/fixture_tracks/
    python benchmarks/fixture_tracks.py --bundle DIR --out DIR --refresh
    python benchmarks/fixture_tracks.py --combiner balanced    # the bundle's class-balanced combiner

The cache is keyed by the bundle's name and version (and the combiner, when not the default): a new default bundle
makes a fresh cache.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = ROOT.parent / "shared" / "fixtures" / "videos"
DEFAULT_CACHE = Path.home() / ".cache" / "rtfer" / "fixture_tracks"

log = logging.getLogger("fixture_tracks")


@dataclass
class ClipRows:
    """One clip's face rows (one per face per frame), in frame order."""

    clip: str
    label: str | None  # the clip's labelled emotion, None for unlabelled clips
    fps: float
    frames: int  # frames in the clip (rows exist only for frames with faces)
    frame: np.ndarray  # (R,) int
    time_s: np.ndarray  # (R,) float
    track_id: np.ndarray  # (R,) int
    xyxy: np.ndarray  # (R, 4)
    score: np.ndarray  # (R,)
    raw: np.ndarray  # (R, 7) raw ensemble probabilities

    def tracks(self) -> dict[int, np.ndarray]:
        """Row indices per track id, in time order."""
        return {int(t): np.flatnonzero(self.track_id == t) for t in np.unique(self.track_id)}


def clip_label(path: Path) -> str | None:
    from rtfer.labels import CLASSES

    head = path.stem.split("_")[0].lower()
    return head if head in CLASSES else None


def _cache_dir(out: Path, bundle, combiner: str = "default") -> Path:
    spec = bundle.spec
    suffix = "" if combiner == "default" else f"-{combiner}"
    return out / f"{spec.name}-{spec.version}{suffix}".replace("/", "_")


def collect(bundle: str = "default", videos: Path = DEFAULT_VIDEOS, out: Path = DEFAULT_CACHE, *,
            refresh: bool = False, combiner: str = "default") -> list[ClipRows]:
    """Run (or load from the cache) every fixture clip; returns one :class:`ClipRows` per clip."""
    from rtfer.pipeline import AnalyzeOptions, Pipeline

    pipeline = Pipeline(AnalyzeOptions(bundle=bundle, backend="onnxruntime", device="cpu", smoothing="none",
                                       classify_rate=0, combiner=combiner))
    folder = _cache_dir(Path(out), pipeline.bundle, combiner)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for path in sorted(Path(videos).glob("*.mp4")):
        cached = folder / f"{path.stem}.npz"
        if refresh or not cached.exists():
            log.warning("classifying every face of %s (cache: %s)", path.name, cached)
            rows: dict[str, list] = {k: [] for k in ("frame", "time_s", "track_id", "xyxy", "score", "raw")}
            frames = 0
            for r in pipeline.run(str(path)):
                frames += 1
                n = len(r.faces)
                rows["frame"] += [r.index] * n
                rows["time_s"] += [r.time_s] * n
                rows["track_id"] += r.faces.track_ids.tolist()
                rows["xyxy"] += list(r.faces.xyxy)
                rows["score"] += r.faces.scores.tolist()
                rows["raw"] += list(r.raw.probs)
            import cv2

            cap = cv2.VideoCapture(str(path))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
            cap.release()
            np.savez_compressed(cached, frames=frames, fps=fps, frame=np.asarray(rows["frame"], np.int64),
                                time_s=np.asarray(rows["time_s"], np.float64),
                                track_id=np.asarray(rows["track_id"], np.int64),
                                xyxy=np.asarray(rows["xyxy"], np.float32).reshape(-1, 4),
                                score=np.asarray(rows["score"], np.float32),
                                raw=np.asarray(rows["raw"], np.float64).reshape(-1, 7))
        d = np.load(cached)
        clips.append(ClipRows(path.name, clip_label(path), float(d["fps"]), int(d["frames"]), d["frame"], d["time_s"],
                              d["track_id"], d["xyxy"], d["score"], d["raw"]))
    return clips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    p.add_argument("--out", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--refresh", action="store_true", help="re-run the model even when a cache exists")
    p.add_argument("--combiner", default="default", help="the bundle's combiner (default: its own)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for c in collect(a.bundle, a.videos, a.out, refresh=a.refresh, combiner=a.combiner):
        print(f"{c.clip}: {c.frames} frames, {len(c.frame)} face rows, {len(c.tracks())} tracks, label {c.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
