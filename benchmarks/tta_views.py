"""Does a combiner gain from more test-time views than the mirror image? (issue 22)

Every FER+ val crop is read by each member of a bundle in several views: itself, zoomed in or out by 10%, shifted by 2
px along each axis, and each of those mirrored. A member's logits are averaged over the chosen views, exactly as the
runtime averages a face and its mirror for a combiner with ``tta_flip``, and the named combiner combines them.
Prints accuracy and mean-class accuracy per view set. Member outputs are cached per view (``--cache``).

    python benchmarks/tta_views.py --data _data/ferplus_val.npz [--bundle default] [--combiner flip]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("tta_views")

#: name -> (scale, dx, dy) of an affine view about the crop's centre (scale > 1 zooms in)
VIEWS = {"id": (1.0, 0, 0), "zoom_in": (1.1, 0, 0), "zoom_out": (0.9, 0, 0), "right": (1.0, 2, 0),
         "left": (1.0, -2, 0), "down": (1.0, 0, 2), "up": (1.0, 0, -2)}
SETS = {"itself": ["id"], "+ mirror (tta_flip)": ["id", "id~"], "+ zoom in": ["id", "id~", "zoom_in", "zoom_in~"],
        "+ zoom out": ["id", "id~", "zoom_out", "zoom_out~"], "+ shifts left/right": ["id", "id~", "left", "left~",
                                                                                   "right", "right~"],
        "+ shifts up/down": ["id", "id~", "up", "up~", "down", "down~"], "all 14": [v + m for v in VIEWS for m in "~"]
        + list(VIEWS)}


def view(images: np.ndarray, name: str) -> np.ndarray:
    """``images`` (n, S, S, 3) uint8 in view ``name`` (a VIEWS key, ``~`` appended for its mirror image)."""
    import cv2

    scale, dx, dy = VIEWS[name.rstrip("~")]
    h, w = images.shape[1:3]
    out = images
    if (scale, dx, dy) != (1.0, 0, 0):
        m = np.float32([[scale, 0, (1 - scale) * w / 2 + dx], [0, scale, (1 - scale) * h / 2 + dy]])
        out = np.stack([cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                        for x in images])
    return np.ascontiguousarray(out[:, :, ::-1] if name.endswith("~") else out)


def member_logits(bundle, images: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Each member's tempered log-probabilities (n, 7) for ``images`` (no flip TTA: views are explicit here)."""
    parts: list[list[np.ndarray]] = [[] for _ in bundle.spec.members]
    for i in range(0, len(images), batch):
        for k, p in enumerate(bundle.member_probs(images[i:i + batch])):
            parts[k].append(np.log(np.clip(p, 1e-12, 1.0)))
    return [np.concatenate(p) for p in parts]


def score(bundle, per_view: dict[str, list[np.ndarray]], names: list[str], labels: np.ndarray) -> tuple[float, float]:
    from rtfer.ensemble import softmax
    from rtfer.training.stacker import score as accuracies

    probs = [softmax(np.mean([per_view[v][k] for v in names], axis=0)) for k in range(len(bundle.spec.members))]
    s = accuracies(bundle.combine(probs), labels)
    return s["accuracy"], s["mean_class_accuracy"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="packed val split (.npz, from `python -m rtfer.training pack`)")
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--combiner", default="flip", help="fitted on the members' averaged outputs (default: flip)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rtfer" / "tta_views")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from rtfer.training.data import load_split

    from rtfer.bundle import load_bundle
    from rtfer.errors import RtferError

    try:
        split = load_split(args.data)
        b = load_bundle(args.bundle, backend="onnxruntime", device="cpu", precision="fp32", combiner=args.combiner)
    except (RtferError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    b.tta_flip = False
    images = split.images if split.images.shape[-1] == 3 else np.repeat(split.images, 3, axis=-1)
    per_view = {}
    for name in [v + m for v in VIEWS for m in ("", "~")]:
        path = args.cache / f"{b.spec.name}-{b.spec.version}-{Path(args.data).stem}-{len(images)}-{name}.npz"
        if path.exists():
            with np.load(path) as z:
                per_view[name] = [z[f"m{k}"] for k in range(len(b.spec.members))]
        else:
            per_view[name] = member_logits(b, view(images, name))
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path.with_suffix(".tmp.npz"), **{f"m{k}": v for k, v in enumerate(per_view[name])})
            path.with_suffix(".tmp.npz").replace(path)
        log.info("view %s: members %s", name, ", ".join(
            f"{m.name} {100 * (v.argmax(1) == split.labels).mean():.2f}%" for m, v in zip(b.spec.members,
                                                                                        per_view[name])))
    print(f"| views ({b.spec.name} {b.spec.version}, combiner {args.combiner}) | n | accuracy % | mean-class % |")
    print("|---|---|---|---|")
    for label, names in SETS.items():
        acc, mc = score(b, per_view, names, split.labels)
        print(f"| {label} | {len(names)} | {100 * acc:.2f} | {100 * mc:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
