"""Our face tracker side by side with supervision's ByteTrack (and boxmot's trackers as a yardstick) on the same
detections.

Every clip is decoded once and its detections (the bundle's detector on every frame, as ``rtfer analyze`` runs it)
are cached under ``~/.cache/rtfer/detections/``. Each tracker then sees exactly those detections on the detection
frames (``--every N``: every N-th frame, as the pipeline; our tracker follows faces by optical flow in between, the
others output nothing in between). Per clip and tracker it prints the ID figures of
``benchmarks/tracking_stability.py`` (``ids``, ``ids_0.5s``, ``per_person``, ``jumps``) and:

- ``hidden_kept``: occlusion trials kept / made. For up to ``--hide-faces`` faces per clip (default 3, the
  longest-lived of a reference run), the detections of that face are removed for ``--hide-s`` seconds (default 2) as
  near the middle of its life as the reference run sees it both when the gap starts and right after it; a trial is
  kept when the face's ID after the gap is the one it had before (and no other face took that ID).

    python benchmarks/tracker_compare.py                                   # every fixture clip, every 3rd frame
    python benchmarks/tracker_compare.py CLIP.mp4 --every 1 --trackers rtfer,bytetrack --json out.json

Trackers: ``rtfer`` (rtfer.tracking.Tracker, default options), ``bytetrack`` (``supervision.ByteTrack``, its
defaults at the detection rate), ``bytetrack2s`` (the same with a 2 s lost-track buffer, like ours) and, only when the
AGPL ``boxmot`` package happens to be importable (never a dependency of rtfer), ``ocsort`` and ``botsort`` (no ReID
weights, each keeping a lost track 2 s). supervision is not a dependency either: ``pip install "supervision<0.31"``
(0.31 removed ByteTrack). boxmot needs opencv < 5, so it is best kept out of rtfer's environment: install it with
``pip install --target DIR --no-deps boxmot filterpy lapx gdown platformdirs rich`` and run this script with
``PYTHONPATH=DIR``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracking_stability import id_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = ROOT.parent / "shared" / "fixtures" / "videos"
DEFAULT_CACHE = Path.home() / ".cache" / "rtfer" / "detections"
TRACKERS = ("rtfer", "bytetrack", "bytetrack2s", "ocsort", "botsort")
#: People per fixture clip, counted by eye (the default estimate, the 90th percentile of faces per frame, misses
#: people who are never all in view at once): the 6-face classroom shows 8 people as the camera pans (the
#: teacher, a woman at the right edge and a man behind the teacher included), the 4-face one 5 (a student at the
#: left edge); the grayscale portrait is 7 shots of a face separated by title cards (each shot is its own
#: appearance: a tracker must not link them).
PERSONS = {"unlabeled_george210843_classroom_6faces": 8, "unlabeled_george210843_classroom_4faces": 5,
           "unlabeled_kameshpravin_grayscale_portrait_01": 7,
           "classroom_mosaic_26": 26}  # benchmarks/crowd_clip.py: both classrooms and their mirror images

log = logging.getLogger("tracker_compare")


# --------------------------------------------------------------------------------------------------- detections
def detections(video: Path, bundle: str = "default", cache: Path = DEFAULT_CACHE) -> dict:
    """Per-frame detections of ``video`` (cached): dict with fps, time (F,), counts (F,), xyxy/landmarks/scores
    concatenated over frames."""
    path = Path(cache) / bundle.replace("/", "_") / f"{Path(video).stem}.npz"
    if not path.exists():
        from rtfer.bundle import BundleSpec, resolve_bundle_path
        from rtfer.capture import open_source
        from rtfer.detection import create_detector
        from rtfer.pipeline import resolve_detector

        spec = BundleSpec.read(resolve_bundle_path(bundle))
        detector = create_detector(resolve_detector("auto", spec), device="cpu", allow_fallback=True)
        log.warning("detecting faces on every frame of %s (cache: %s)", Path(video).name, path)
        times, counts, boxes, lms, scores = [], [], [], [], []
        with open_source(str(video)) as src:
            for frame in src:
                f = detector.detect(frame.image)
                times.append(frame.time_s)
                counts.append(len(f))
                boxes.append(f.xyxy)
                lms.append(f.landmarks)
                scores.append(f.scores)
        path.parent.mkdir(parents=True, exist_ok=True)
        import cv2

        cap = cv2.VideoCapture(str(video))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
        cap.release()
        np.savez_compressed(path, fps=fps, time=np.asarray(times), counts=np.asarray(counts, np.int64),
                            xyxy=np.concatenate(boxes).reshape(-1, 4), landmarks=np.concatenate(lms).reshape(-1, 5, 2),
                            scores=np.concatenate(scores).reshape(-1))
    d = np.load(path)
    return {k: d[k] for k in d.files}


def frame_faces(det: dict, hide: list[tuple[int, int, np.ndarray]] | None = None):
    """Yield (frame index, Faces) from the cache; ``hide``: (first, last frame, box) spans whose detection (IoU >= 0.3
    with the box, the face's box at the gap's start) is removed."""
    from rtfer.tracking import iou_matrix
    from rtfer.types import Faces

    ends = np.cumsum(det["counts"])
    starts = ends - det["counts"]
    for i, (a, b) in enumerate(zip(starts, ends)):
        f = Faces(det["xyxy"][a:b], det["landmarks"][a:b], det["scores"][a:b])
        for first, last, box in hide or ():
            if first <= i <= last and len(f):
                f = f[iou_matrix(box[None], f.xyxy)[0] < 0.3]
        yield i, f


# ------------------------------------------------------------------------------------------------------ trackers
class _Ours:
    name = "rtfer"
    uses_images = True

    def __init__(self, fps: float, every: int):
        from rtfer.tracking import Tracker

        self.t = Tracker()

    def update(self, faces, index, image):
        out = self.t.update(faces, index, image_bgr=image)
        return out.track_ids, out.xyxy

    def propagate(self, image, index):
        out = self.t.propagate(image, index)
        return out.track_ids, out.xyxy


class _ByteTrack:
    uses_images = False

    def __init__(self, fps: float, every: int, buffer_s: float | None = None):
        import supervision as sv

        rate = fps / every
        kw = {} if buffer_s is None else {"lost_track_buffer": int(round(buffer_s * 30))}  # sv scales by rate / 30
        self.name = "bytetrack" if buffer_s is None else "bytetrack2s"
        self.t = sv.ByteTrack(frame_rate=rate, **kw)
        self.sv = sv

    def update(self, faces, index, image):
        d = self.sv.Detections(xyxy=faces.xyxy.astype(np.float32).reshape(-1, 4),
                               confidence=faces.scores.astype(np.float32), class_id=np.zeros(len(faces), int))
        out = self.t.update_with_detections(d)
        return np.asarray(out.tracker_id, np.int64), np.asarray(out.xyxy)

    propagate = None


class _BoxMOT:
    uses_images = True

    def __init__(self, fps: float, every: int, kind: str):
        import boxmot  # AGPL: a yardstick only, imported when the user installed it themselves

        self.name = kind
        lost = int(round(2 * fps / every))  # a lost track is kept 2 s, as our occlusion target asks
        if kind == "ocsort":
            self.t = boxmot.OcSort(max_age=lost)
        else:  # no ReID model (nothing is downloaded); camera-motion compensation on, as its default
            self.t = boxmot.BotSort(use_embeddings=False, track_buffer=lost, frame_rate=int(round(fps / every)))

    def update(self, faces, index, image):
        dets = np.concatenate([faces.xyxy.reshape(-1, 4), faces.scores.reshape(-1, 1), np.zeros((len(faces), 1))],
                              axis=1).astype(np.float32)
        out = np.asarray(self.t.update(dets, image), np.float64).reshape(-1, 8)  # x1 y1 x2 y2 id conf cls det
        return out[:, 4].astype(np.int64), out[:, :4]

    propagate = None


def make_tracker(name: str, fps: float, every: int):
    if name == "rtfer":
        return _Ours(fps, every)
    if name == "bytetrack":
        return _ByteTrack(fps, every)
    if name == "bytetrack2s":
        return _ByteTrack(fps, every, buffer_s=2.0)
    if name in ("ocsort", "botsort"):
        return _BoxMOT(fps, every, name)
    raise ValueError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")


def available(name: str) -> str | None:
    """None when the tracker can run here, else why not."""
    import importlib.util

    need = {"bytetrack": "supervision", "bytetrack2s": "supervision", "ocsort": "boxmot", "botsort": "boxmot"}.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"{need} is not installed"
    if need == "supervision":
        import supervision as sv

        if not hasattr(sv, "ByteTrack"):
            return f"supervision {sv.__version__} has no ByteTrack (removed in 0.31)"
    return None


def run_tracker(name: str, video: Path, det: dict, every: int, hide=None) -> list:
    """Frames as :func:`tracking_stability.track_video` returns them."""
    from rtfer.capture import open_source

    fps = float(det["fps"])
    tracker = make_tracker(name, fps, every)
    out = []
    faces_iter = frame_faces(det, hide)
    images = open_source(str(video)) if tracker.uses_images else None
    try:
        frames = iter(images) if images is not None else None
        for i, faces in faces_iter:
            image = next(frames).image if frames is not None else None
            t = float(det["time"][i])
            if i % every == 0:
                ids, boxes = tracker.update(faces, i, image)
                out.append((i, t, ids, boxes, np.ones(len(ids), bool)))
            elif tracker.propagate is not None:
                ids, boxes = tracker.propagate(image, i)
                out.append((i, t, ids, boxes, np.zeros(len(ids), bool)))
    finally:
        if images is not None:
            images.close()
    return out


def _id_at(frames, first: int, last: int, box: np.ndarray, before: bool) -> int | None:
    """The ID whose box best overlaps ``box`` on the nearest output frame before ``first`` / after ``last``."""
    from rtfer.tracking import iou_matrix

    seq = [f for f in frames if (f[0] < first if before else f[0] > last) and len(f[2])]
    seq = seq[::-1] if before else seq
    for idx, _, ids, boxes, _ in seq[:15]:
        iou = iou_matrix(box[None], boxes)[0]
        if iou.max() >= 0.3:
            return int(ids[int(iou.argmax())])
    return None


def hide_trials(name: str, video: Path, det: dict, every: int, hide_s: float, reference: list, faces: int = 3):
    """(kept, made): occlusion trials for the ``faces`` longest-lived IDs of ``reference`` (our tracker's run)."""
    fps = float(det["fps"])
    span: dict[int, list[int]] = {}
    boxes: dict[tuple[int, int], np.ndarray] = {}
    for idx, _, ids, bx, _ in reference:
        for tid, b in zip(ids.tolist(), bx):
            span.setdefault(tid, [idx, idx])[1] = idx
            boxes[(tid, idx)] = b
    gap = int(round(hide_s * fps))
    longest = sorted(span, key=lambda k: span[k][0] - span[k][1])[:faces]
    kept = made = 0
    for tid in longest:
        a, b = span[tid]
        if b - a < gap + 3 * fps:  # needs a second before and after the gap
            continue
        # the gap is placed as near the middle of the face's life as the reference allows: the face must be seen
        # (by the reference run) when the gap starts and again just after it, else there is nothing to keep
        middle = (a + b - gap) // 2
        starts = sorted(range(a + every, b - gap - every, every), key=lambda k: abs(k - middle))
        first = box = after_box = None
        for f0 in starts:
            f0 -= f0 % every  # the gap starts on a detection frame
            cand = [k for k in range(f0, f0 + every + 1) if (tid, k) in boxes]
            after = next((k for k in range(f0 + gap, f0 + gap + 3 * every) if (tid, k) in boxes), None)
            if cand and after is not None:
                first, box, after_box = f0, boxes[(tid, cand[0])], boxes[(tid, after)]
                break
        if first is None:
            continue
        last = first + gap - 1
        frames = run_tracker(name, video, det, every, hide=[(first, last, box)])
        before = _id_at(frames, first, last, box, True)
        after = _id_at(frames, last, last, after_box, False)  # who is where the reference saw the face after the gap
        made += 1
        kept += int(before is not None and before == after)
    return kept, made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*", type=Path, help="default: every fixture clip")
    ap.add_argument("--every", type=int, default=3, help="detect every N frames (default 3, as rtfer analyze)")
    ap.add_argument("--trackers", default="rtfer,bytetrack,bytetrack2s,ocsort,botsort")
    ap.add_argument("--bundle", default="default", help="bundle whose detector to use")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--hide-s", type=float, default=2.0, help="occlusion trials: seconds a face is hidden")
    ap.add_argument("--hide-faces", type=int, default=3, help="occlusion trials per clip (its longest-lived faces)")
    ap.add_argument("--no-hide", action="store_true", help="skip the occlusion trials")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from smoothing_stability import format_table

    videos = a.videos or sorted(DEFAULT_VIDEOS.glob("*.mp4"))
    names = [n.strip() for n in a.trackers.split(",") if n.strip()]
    for n in names:
        why = available(n) if n in TRACKERS else f"unknown tracker (choose from {', '.join(TRACKERS)})"
        if why:
            log.warning("skipping %s: %s", n, why)
    names = [n for n in names if n in TRACKERS and available(n) is None]
    rows = []
    for video in videos:
        det = detections(video, a.bundle, a.cache)
        reference = None
        for n in names:
            frames = run_tracker(n, video, det, a.every)
            if n == "rtfer":
                reference = frames
            known = PERSONS.get(video.stem)
            s = id_stats(frames, every=a.every, persons=None if known is None else float(known))
            row = {"clip": video.stem.replace("unlabeled_", "")[:32], "tracker": n, "persons": s["persons"],
                   "ids": s["ids"], "ids_0.5s": s["ids_0.5s"], "per_person": s["per_person"], "jumps": s["jumps"]}
            if not a.no_hide:
                ref = reference if reference is not None else run_tracker("rtfer", video, det, a.every)
                reference = ref
                kept, made = hide_trials(n, video, det, a.every, a.hide_s, ref, a.hide_faces)
                row["hidden_kept"] = f"{kept}/{made}"
            rows.append(row)
            log.info("%s %s: %s", video.name, n, row)
    print(f"# trackers on the same detections, detection every {a.every} frame(s)")
    print(format_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
