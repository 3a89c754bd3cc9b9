"""Do the ensemble's members, and each face's mirror image, agree where the ensemble is wrong?

A confidence can only rank a wrong frame below a right one if something in the model's outputs differs between
them. The cheapest such signals an ensemble has are its members' disagreement and the disagreement between a face
and its mirror image. This runs the labelled clips (``<emotion>_*.mp4``; default: the labelled fixture clips)
through the runtime (default detection, tracking and alignment, every face classified on every frame, no
smoothing), keeps each member's probabilities for the face and for its mirror image, and prints per clip:

- each member's accuracy, mean top probability and most frequent label;
- the ensemble's accuracy and mean confidence (its top probability);
- ``members_agree``: frames where all members give the same label; ``mirror_agree``: frames where every member
  gives the face and its mirror the same label.

Then, over all labelled frames, the AUROC (right above wrong) of the ensemble's confidence and of that confidence
multiplied by each agreement: if the wrong frames are read the same way by every member and every mirror, no
combination of these signals can separate them, and the clips' confidence gap is the model's, not the calibration's.

    python benchmarks/member_agreement.py [CLIP.mp4 ...] [--bundle default] [--every N]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from fixture_tracks import DEFAULT_VIDEOS, clip_label

log = logging.getLogger("member_agreement")


class MemberRecorder:
    """Stands in for ``bundle.member_probs``: returns the members' probabilities unchanged and keeps them, with the
    members' probabilities for the mirrored crops, for every batch the pipeline classifies."""

    def __init__(self, bundle) -> None:
        self._member_probs = bundle.member_probs
        self.faces: list[list[np.ndarray]] = []
        self.mirrored: list[list[np.ndarray]] = []

    def __call__(self, crops: dict[int, np.ndarray]) -> list[np.ndarray]:
        """``crops``: {input size: (n, S, S, 3) crops}, as the pipeline passes them."""
        out = self._member_probs(crops)
        self.faces.append(out)
        self.mirrored.append(self._member_probs({s: np.ascontiguousarray(c[:, :, ::-1]) for s, c in crops.items()}))
        return out

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, n, 7) member probabilities of the faces and of their mirror images recorded since the last take."""
        def stack(batches):
            return np.stack([np.concatenate([b[m] for b in batches]) for m in range(len(batches[0]))])

        if not self.faces:
            return np.zeros((0, 0, 7)), np.zeros((0, 0, 7))
        faces, mirrored = stack(self.faces), stack(self.mirrored)
        self.faces, self.mirrored = [], []
        return faces, mirrored


def clip_figures(members: np.ndarray, ensemble: np.ndarray, label: int, names: tuple[str, ...],
                 members_agree: np.ndarray, mirror_agree: np.ndarray) -> dict:
    """Figures of one clip: ``members`` (M, n, 7), ``ensemble`` (n, 7), ``label`` the clip's class, and the (n,)
    agreements (:func:`agreement`, :func:`mirror_agreement`)."""
    top = members.argmax(-1)  # (M, n)
    row: dict = {"frames": int(ensemble.shape[0])}
    for m in range(members.shape[0]):
        counts = np.bincount(top[m], minlength=len(names))
        row[f"m{m}_acc"] = float(np.mean(top[m] == label))
        row[f"m{m}_conf"] = float(members[m].max(-1).mean())
        row[f"m{m}_top"] = names[int(counts.argmax())]
    row["ens_acc"] = float(np.mean(ensemble.argmax(-1) == label))
    row["ens_conf"] = float(ensemble.max(-1).mean())
    row["members_agree"] = float(np.mean(members_agree))
    row["mirror_agree"] = float(np.mean(mirror_agree))
    return row


def agreement(members: np.ndarray) -> np.ndarray:
    """(n,) bool: all members give the same label."""
    top = members.argmax(-1)
    return np.all(top == top[:1], axis=0)


def mirror_agreement(members: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """(n,) bool: every member gives the face and its mirror image the same label."""
    return np.all(members.argmax(-1) == mirrored.argmax(-1), axis=0)


def separation(conf: np.ndarray, right: np.ndarray, members_agree: np.ndarray, mirror_agree: np.ndarray) -> list[dict]:
    """AUROC (right above wrong) of the confidence alone and weighted by each agreement signal."""
    from val_calibration import auroc

    conf = np.asarray(conf, np.float64)
    signals = {"confidence": conf, "confidence x members_agree": conf * members_agree,
               "confidence x mirror_agree": conf * mirror_agree,
               "confidence x both": conf * members_agree * mirror_agree}
    wrong = ~np.asarray(right, bool)
    return [{"score": name, "auroc": auroc(s, right), "wrong_frames": int(wrong.sum()),
             "wrong_where_all_agree": float(np.mean((members_agree & mirror_agree)[wrong])) if wrong.any() else None}
            for name, s in signals.items()]


def run(clips: list[Path], bundle: str = "default", every: int | None = None) -> tuple[list[dict], list[dict]]:
    """Per-clip figures and the pooled separation table (``every``: detect every N frames; None = the runtime's)."""
    from rtfer.labels import CLASSES
    from rtfer.pipeline import AnalyzeOptions, Pipeline

    pipeline = Pipeline(AnalyzeOptions(bundle=bundle, backend="onnxruntime", device="cpu", smoothing="none",
                                       classify_rate=0, every=AnalyzeOptions.every if every is None else every))
    recorder = MemberRecorder(pipeline.bundle)
    pipeline.bundle.member_probs = recorder
    rows, pooled = [], {"conf": [], "right": [], "members": [], "mirror": []}
    for path in clips:
        label = CLASSES.index(clip_label(path))
        ensemble = [r.raw.probs for r in pipeline.run(str(path))]
        ensemble = np.concatenate(ensemble) if ensemble else np.zeros((0, 7))
        members, mirrored = recorder.take()
        if len(ensemble) == 0:
            log.warning("%s: no face found", path.name)
            continue
        if members.shape[1] != len(ensemble):  # the recorder saw other calls than the clip's classifications
            raise RuntimeError(f"{path.name}: {members.shape[1]} recorded member rows for {len(ensemble)} face rows")
        agree, mirror = agreement(members), mirror_agreement(members, mirrored)
        rows.append({"clip": path.stem, "label": CLASSES[label],
                     **clip_figures(members, ensemble, label, CLASSES, agree, mirror)})
        pooled["conf"].append(ensemble.max(-1))
        pooled["right"].append(ensemble.argmax(-1) == label)
        pooled["members"].append(agree)
        pooled["mirror"].append(mirror)
    if not rows:
        return rows, []
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    return rows, separation(cat["conf"], cat["right"], cat["members"], cat["mirror"])


def main(argv: list[str] | None = None) -> int:
    from smoothing_stability import format_table

    from rtfer.labels import CLASSES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="*", type=Path, help="labelled clips named <emotion>_*.mp4 (default: the fixtures)")
    p.add_argument("--bundle", default="default")
    p.add_argument("--every", type=int, default=None, help="detect every N frames (default: as rtfer analyze)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    clips = a.clips or sorted(c for c in DEFAULT_VIDEOS.glob("*.mp4") if clip_label(c))
    if not clips:
        print(f"error: no labelled clips given and none in {DEFAULT_VIDEOS}", file=sys.stderr)
        return 2
    for c in clips:
        if not c.is_file():
            print(f"error: no such clip: {c}", file=sys.stderr)
            return 2
        if clip_label(c) is None:
            print(f"error: {c.name}: the name must start with the clip's emotion ({', '.join(CLASSES)})",
                  file=sys.stderr)
            return 2
    if a.every is not None and a.every < 1:
        print("error: --every must be >= 1", file=sys.stderr)
        return 2
    rows, sep = run(clips, a.bundle, a.every)
    print("# per clip: each member's accuracy, mean top probability and most frequent label; the ensemble's;")
    print("# members_agree / mirror_agree: share of frames where all members / every member and its mirror agree")
    print(format_table(rows))
    print()
    print("# all labelled frames: AUROC (right above wrong) of the confidence, alone and times each agreement")
    print(format_table(sep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
