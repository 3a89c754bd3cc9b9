"""Dominant smoothed emotion per labelled clip: what a bundle reads on the fixture videos.

Each labelled fixture clip (``<emotion>_<source>_NN.mp4``) shows one face with one emotion. For every clip this prints
the share of frames per smoothed label (the most confident face of each frame), the dominant label and whether it
matches the clip's label, plus the mean smoothed confidence against the share of frames labelled right.

    python benchmarks/fixture_emotions.py                                   # default bundle, ../shared/fixtures/videos
    python benchmarks/fixture_emotions.py --bundle DIR --videos FOLDER --json out.json
    python benchmarks/fixture_emotions.py --combiner balanced                # the class-balanced combiner
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

DEFAULT_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "videos"


def clip_label(path: Path) -> str | None:
    from rtfer.labels import CLASSES

    head = path.stem.split("_")[0].lower()
    return head if head in CLASSES else None


def measure(bundle: str, videos: list[Path], combiner: str = "default") -> list[dict]:
    from rtfer.labels import CLASSES
    from rtfer.pipeline import AnalyzeOptions, Pipeline

    pipeline = Pipeline(AnalyzeOptions(bundle=bundle, backend="onnxruntime", device="cpu",
                                        combiner=combiner))
    rows = []
    for path in videos:
        label = clip_label(path)
        votes: Counter = Counter()
        conf = []
        for r in pipeline.run(str(path)):
            if len(r.faces):
                p = r.smoothed.probs[int(np.argmax(r.faces.scores))]
                votes[CLASSES[int(p.argmax())]] += 1
                conf.append(float(p.max()))
        n = sum(votes.values())
        dominant = votes.most_common(1)[0][0] if votes else None
        rows.append({"clip": path.name, "label": label, "frames_with_face": n, "dominant": dominant,
                     "right": dominant == label,
                     "shares": {k: round(v / n, 3) for k, v in votes.most_common()} if n else {},
                     "frames_right": round(votes.get(label, 0) / n, 3) if n else 0.0,
                     "mean_confidence": round(float(np.mean(conf)), 3) if conf else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--combiner", default="default", help="the bundle's combiner (rtfer info lists them)")
    p.add_argument("--videos", default=str(DEFAULT_VIDEOS), help="folder of labelled clips")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    folder = Path(a.videos)
    videos = sorted(v for v in folder.glob("*.mp4") if clip_label(v)) if folder.is_dir() else []
    if not videos:
        print(f"fixture_emotions: error: no labelled clips (<emotion>_*.mp4) in {folder}", file=sys.stderr)
        return 2
    rows = measure(a.bundle, videos, a.combiner)
    print("| clip | label | dominant | right | frames labelled right | mean confidence | shares |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"].items())
        print(f"| {r['clip']} | {r['label']} | {r['dominant']} | {'yes' if r['right'] else 'no'} | "
              f"{r['frames_right']:.2f} | {r['mean_confidence']} | {shares} |")
    print(f"{sum(r['right'] for r in rows)}/{len(rows)} clips right")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
