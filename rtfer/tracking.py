"""Face tracking: stable ``track_ids`` across frames, and optical-flow propagation between detections.

:class:`Tracker` is ByteTrack-style without a Kalman filter: every track predicts its box with a constant centre
velocity (the box keeps its size; extrapolation stops after ``max_predict_frames``), detections are matched to
predictions by Hungarian assignment on IoU (high-score detections first, then the remaining active tracks against
low-score detections), unmatched high-score detections start new tracks with never-reused IDs, and tracks unseen
for ``max_age_frames`` are forgotten. Hungarian assignment is one-to-one, so two faces visible in the same frame can
never share an ID, and constant-velocity prediction keeps crossing or fast faces from swapping IDs. Tracks matched
on the previous update get first pick.

Re-identification: every track that is still unmatched after those passes (lost for a while, or missed by its
prediction on this frame) may take a remaining high-score detection when the detection is near where the track
was (centre distance up to ``reid_distance`` box sizes, similar size) and, where the frame was given, looks like it:
each track keeps a colour histogram (hue-saturation, central part of the box) of its detections, compared by the
Bhattacharyya coefficient (at least ``reid_min_similarity``). A face that the detector misses for a few frames
thus keeps its ID, for up to ``max_age_frames`` (60: 2 s at 30 fps; a longer memory merged two people on the 4-face
classroom fixture when detecting on every frame), and only within the shot where it was last seen: a lost track ends when
the frame's 32 px grey thumbnail differs from the one at the track's last detection by more than ``cut_threshold``
on average (fixture clips: the same shot 5 to 14 s later, panning included, 0.12 to 0.17; another shot after a title
card 0.29 to 0.50), since position says nothing across a cut and colour says little (a grey video has none).
Only detections are output by :meth:`Tracker.update`: a lost track is never drawn or
classified, and a box carried by :meth:`Tracker.propagate` is dropped at the next detection frame unless a fresh
detection confirms it, so a carried box never outlives its face by more than ``--every`` frames.

For ``--every N`` the pipeline calls :meth:`Tracker.propagate` on frames without detection: the last faces'
landmarks and a few interior points are followed with pyramidal Lucas-Kanade flow (forward-backward checked).
State is bounded: live tracks, the last output faces and one downscaled gray frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from rtfer.types import Faces

log = logging.getLogger(__name__)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n,4) and b (m,4), xyxy."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of a rectangular cost matrix: ``(rows, cols)`` sorted by row, as
    ``scipy.optimize.linear_sum_assignment`` gives. The Hungarian method with shortest augmenting paths, O(n^2 m)
    with numpy over the columns: the tracker's matrices are at most ``max_faces`` square, and importing
    scipy.optimize instead would cost a third of a second before the first frame is tracked."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost contains non-finite values")
    if cost.shape[0] > cost.shape[1]:
        cols, rows = linear_assignment(cost.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = cost.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    best = cost.argmin(axis=1)
    if len(np.unique(best)) == n:  # every row's cheapest column is its own: that is optimal (the usual tracking case)
        return np.arange(n), best
    a = np.zeros((n + 1, m + 1))
    a[1:, 1:] = cost
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, np.int64)  # p[j]: the row matched to column j (1-based; 0 = free)
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used
            free[0] = False
            cur = a[i0] - u[i0] - v
            better = free & (cur < minv)
            minv[better] = cur[better]
            way[better] = j0
            masked = np.where(free, minv, np.inf)
            j1 = int(np.argmin(masked))
            delta = masked[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.flatnonzero(p[1:]) + 1
    rows = p[cols] - 1
    order = np.argsort(rows)
    return rows[order], cols[order] - 1


def _assign(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Maximum-total-IoU one-to-one assignment, keeping pairs with IoU >= threshold."""
    if iou.size == 0:
        return []
    rows, cols = linear_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= threshold]


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # (4,) float64, position estimate at box_frame (detection or flow)
    box_frame: int
    velocity: np.ndarray  # (4,) px per frame for x1, y1, x2, y2 (the centre's: the size is not extrapolated)
    last_det_frame: int  # last frame a detection was matched (ages are counted from it)
    hits: int = 1
    hist: np.ndarray | None = None  # appearance: normalised hue-saturation histogram of detections
    det_box: np.ndarray | None = None  # last detected box (re-identification measures from it)
    thumb: np.ndarray | None = None  # 32 px grey thumbnail of the frame it was last detected on (shot changes)
    max_predict: int = 10

    def predict(self, frame_index: int) -> np.ndarray:
        return self.box + self.velocity * min(frame_index - self.box_frame, self.max_predict)

    def move_to(self, box: np.ndarray, frame_index: int, smoothing: float) -> None:
        box = np.asarray(box, np.float64)
        dt = frame_index - self.box_frame
        if dt > 0:
            shift = ((box[:2] + box[2:]) - (self.box[:2] + self.box[2:])) / 2 / dt
            inst = np.concatenate([shift, shift])
            self.velocity = inst if self.hits <= 1 else smoothing * self.velocity + (1 - smoothing) * inst
        self.box = box.copy()
        self.box_frame = frame_index


def appearance(image_bgr: np.ndarray, boxes: np.ndarray, bins: tuple[int, int] = (12, 4)) -> np.ndarray:
    """(n, h*s) normalised hue-saturation histograms of the central half of each box (hair and background
    excluded); rows of zeros for boxes outside the image."""
    import cv2

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), bins[0] * bins[1]), np.float32)
    h, w = image_bgr.shape[:2]
    for i, b in enumerate(boxes):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        hw, hh = (b[2] - b[0]) / 4, (b[3] - b[1]) / 4
        x0, x1 = int(max(0, cx - hw)), int(min(w, cx + hw + 1))
        y0, y1 = int(max(0, cy - hh)), int(min(h, cy + hh + 1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        hsv = cv2.cvtColor(np.ascontiguousarray(image_bgr[y0:y1, x0:x1]), cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, list(bins), [0, 180, 0, 256]).ravel()
        total = hist.sum()
        if total > 0:
            out[i] = hist / total
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficients (1 = same colours, 0 = disjoint) between histogram rows a (n, k) and b (m, k)."""
    return np.sqrt(np.clip(a, 0, None)) @ np.sqrt(np.clip(b, 0, None)).T


class Tracker:
    """Assigns stable track IDs to per-frame :class:`Faces`; lives on one thread (no locks).

    - ``iou_threshold``: minimum IoU between a track's predicted box and a high-score detection to match.
    - ``max_age_frames``: a track unmatched for more frames than this is forgotten (its ID is never reused).
    - ``cut_threshold``: a lost track ends when the mean absolute difference (0..1) between 32 px grey thumbnails of
      this frame and of the frame it was last detected on exceeds this (a shot change; ``None``: never; needs
      ``image_bgr``).
    - ``reid_distance``: a still-unmatched track may take a detection whose centre is within this many box sizes
      (the mean side of the two boxes) of the track's predicted or last detected centre, with sides within a factor
      ``reid_max_scale``, and, when both have a histogram, an appearance similarity >= ``reid_min_similarity``.
    - ``max_predict_frames``: constant-velocity prediction stops after this many frames.
    - ``high_score`` / ``low_score``: detections >= high_score are matched first and may start tracks; those in
      [low_score, high_score) only extend already-active tracks (ByteTrack's second pass) at ``low_iou_threshold``;
      the rest are dropped. With the detector's default threshold (0.5) every detection is "high"; lower the
      detector threshold to let the second pass rescue blurred or occluded faces.
    - ``velocity_smoothing``: weight of the previous velocity when a new measurement arrives (0 = latest only).
    - ``flow_width``: frames are downscaled to at most this width for optical flow in :meth:`propagate`.
    - ``flow_max_error``: forward-backward error (px at flow scale) above which a tracked point is rejected.
    - ``min_flow_fraction``: a face is dropped by :meth:`propagate` when fewer of its points survive.
    """

    def __init__(self, iou_threshold: float = 0.3, max_age_frames: int = 60, *, high_score: float = 0.5,
                 low_score: float = 0.1, low_iou_threshold: float = 0.5, velocity_smoothing: float = 0.5,
                 flow_width: int = 640, flow_max_error: float = 1.0, min_flow_fraction: float = 0.5,
                 reid_distance: float = 1.0, reid_max_scale: float = 1.5, reid_min_similarity: float = 0.5,
                 max_predict_frames: int = 10, cut_threshold: float | None = 0.25) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age_frames < 0:
            raise ValueError(f"max_age_frames must be >= 0, got {max_age_frames}")
        if low_score > high_score:
            raise ValueError(f"low_score ({low_score}) must not exceed high_score ({high_score})")
        self.iou_threshold = float(iou_threshold)
        self.max_age_frames = int(max_age_frames)
        self.high_score = float(high_score)
        self.low_score = float(low_score)
        self.low_iou_threshold = float(low_iou_threshold)
        self.velocity_smoothing = float(velocity_smoothing)
        self.flow_width = int(flow_width)
        self.flow_max_error = float(flow_max_error)
        self.min_flow_fraction = float(min_flow_fraction)
        if reid_distance < 0 or reid_max_scale < 1 or not 0 <= reid_min_similarity <= 1:
            raise ValueError("reid_distance must be >= 0, reid_max_scale >= 1 and reid_min_similarity in [0, 1]")
        self.reid_distance = float(reid_distance)
        self.reid_max_scale = float(reid_max_scale)
        self.reid_min_similarity = float(reid_min_similarity)
        self.max_predict_frames = int(max_predict_frames)
        if cut_threshold is not None and not 0.0 < cut_threshold <= 1.0:
            raise ValueError(f"cut_threshold must be in (0, 1] or None, got {cut_threshold}")
        self.cut_threshold = None if cut_threshold is None else float(cut_threshold)
        self.reidentified = 0  # matches made by re-identification (diagnostics)
        self.scene_ended = 0  # lost tracks ended by a shot change (diagnostics)
        self._next_id = 0
        self.reset()

    def reset(self) -> None:
        """Forget all tracks (a new source). IDs keep increasing, so they are never reused."""
        self.tracks: dict[int, _Track] = {}
        self._last_faces = Faces.empty()
        self._last_update_frame: int | None = None
        self._last_frame: int | None = None
        self._prev_gray: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ matching
    def update(self, faces: Faces, frame_index: int, image_bgr: np.ndarray | None = None) -> Faces:
        """Match this frame's detections to tracks; return the kept faces (input order) with ``track_ids`` set.

        Pass ``image_bgr`` (the frame the faces were detected on) when :meth:`propagate` will follow.
        """
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index < self._last_frame:
            log.info("frame index went back from %d to %d: tracker reset", self._last_frame, frame_index)
            self.reset()
        gray = None if image_bgr is None else self._gray(image_bgr)
        thumb = None if gray is None or self.cut_threshold is None else self._thumb(gray)
        if thumb is not None:  # lost tracks last seen in another shot end (faces seen just before may go on)
            ended = [tid for tid, t in self.tracks.items() if t.last_det_frame != self._last_update_frame
                     and t.thumb is not None and t.thumb.shape == thumb.shape
                     and float(np.abs(thumb - t.thumb).mean()) > self.cut_threshold]
            if ended:
                log.debug("frame %d: shot change, %d lost tracks ended", frame_index, len(ended))
                self.scene_ended += len(ended)
                for tid in ended:
                    del self.tracks[tid]
        boxes = faces.xyxy.astype(np.float64)
        scores = faces.scores
        high = np.nonzero(scores >= self.high_score)[0]
        low = np.nonzero((scores >= self.low_score) & (scores < self.high_score))[0]
        tracks = list(self.tracks.values())
        preds = np.array([t.predict(frame_index) for t in tracks]).reshape(-1, 4)
        ids = np.full(len(faces), -1, np.int64)

        active = [r for r, t in enumerate(tracks) if t.last_det_frame == self._last_update_frame]
        # 1) active tracks <-> high-score detections, on constant-velocity predictions
        for r, c in _assign(iou_matrix(preds[active], boxes[high]), self.iou_threshold):
            ids[high[c]] = tracks[active[r]].track_id
        # 2) still-unmatched active tracks <-> low-score detections (ByteTrack's second pass)
        taken = set(ids[ids >= 0].tolist())
        rest = [r for r in active if tracks[r].track_id not in taken]
        for r, c in _assign(iou_matrix(preds[rest], boxes[low]), self.low_iou_threshold):
            ids[low[c]] = tracks[rest[r]].track_id
        # 3) every still-unmatched track (lost, or missed by its prediction now) <-> remaining high-score
        #    detections: IoU with the predicted or last seen box, or re-identification on position and appearance
        hists = appearance(image_bgr, boxes) if image_bgr is not None and len(faces) else None
        taken = set(ids[ids >= 0].tolist())
        rest = [r for r in range(len(tracks)) if tracks[r].track_id not in taken]
        free = high[ids[high] < 0]
        if rest and len(free):
            score = self._reid_scores([tracks[r] for r in rest], preds[rest], boxes[free],
                                      None if hists is None else hists[free])
            for r, c in _assign(score, 1e-6):
                ids[free[c]] = tracks[rest[r]].track_id
                self.reidentified += int(tracks[rest[r]].last_det_frame != self._last_update_frame)

        for i in np.nonzero(ids >= 0)[0]:
            t = self.tracks[int(ids[i])]
            t.move_to(boxes[i], frame_index, self.velocity_smoothing)
            t.last_det_frame = frame_index
            t.det_box = boxes[i].copy()
            t.thumb = thumb
            t.hits += 1
            if hists is not None and hists[i].any():
                t.hist = hists[i].copy() if t.hist is None else 0.8 * t.hist + 0.2 * hists[i]
        for i in high:
            if ids[i] < 0:
                ids[i] = self._next_id
                self.tracks[self._next_id] = _Track(self._next_id, boxes[i].copy(), frame_index, np.zeros(4),
                                                    frame_index, det_box=boxes[i].copy(),
                                                    hist=None if hists is None or not hists[i].any()
                                                    else hists[i].copy(), max_predict=self.max_predict_frames,
                                                    thumb=thumb)
                self._next_id += 1
        for tid in [tid for tid, t in self.tracks.items() if frame_index - t.last_det_frame > self.max_age_frames]:
            del self.tracks[tid]

        keep = np.nonzero(ids >= 0)[0]
        out = Faces(faces.xyxy[keep], faces.landmarks[keep], faces.scores[keep], ids[keep])
        self._last_faces = out
        self._last_update_frame = self._last_frame = frame_index
        self._prev_gray = gray
        return out

    @staticmethod
    def _thumb(gray: np.ndarray) -> np.ndarray:
        """A 32 px wide grey thumbnail in [0, 1] (shot-change test)."""
        import cv2

        h, w = gray.shape[:2]
        size = (32, max(1, round(32 * h / max(w, 1))))
        return cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    def _reid_scores(self, tracks: list[_Track], preds: np.ndarray, boxes: np.ndarray,
                     hists: np.ndarray | None) -> np.ndarray:
        """(tracks, detections) match scores in (0, 2] for feasible pairs, 0 otherwise: IoU pairs score 1 + IoU;
        re-identified pairs score by closeness and appearance. Pairs that look different (both histograms known,
        similarity below ``reid_min_similarity``) are never feasible."""
        last = np.array([t.det_box if t.det_box is not None else t.box for t in tracks]).reshape(-1, 4)
        iou = np.maximum(iou_matrix(preds, boxes), iou_matrix(last, boxes))
        sim = np.ones(iou.shape)
        if hists is not None:  # a lost track does not take a face that looks different, however well placed
            th = np.array([t.hist if t.hist is not None else np.zeros(hists.shape[1]) for t in tracks])
            known = th.any(axis=1)[:, None] & hists.any(axis=1)[None, :]
            sim = np.where(known, similarity(th, hists), 1.0)
        looks_alike = sim >= self.reid_min_similarity
        score = np.where((iou >= self.iou_threshold) & looks_alike, 1.0 + iou, 0.0)
        if self.reid_distance <= 0:
            return score

        def centre_size(b):
            return (b[:, :2] + b[:, 2:]) / 2, np.sqrt(np.prod(np.clip(b[:, 2:] - b[:, :2], 1, None), axis=1))

        cd, sd = centre_size(boxes)
        for ref in (preds, last):
            ct, st = centre_size(ref)
            size = (st[:, None] + sd[None, :]) / 2
            dist = np.linalg.norm(ct[:, None] - cd[None], axis=2) / size
            ratio = np.maximum(st[:, None] / sd[None, :], sd[None, :] / st[:, None])
            ok = (dist <= self.reid_distance) & (ratio <= self.reid_max_scale) & looks_alike
            reid = np.where(ok, 0.5 * (1 - dist / max(self.reid_distance, 1e-9)) + 0.5 * sim, 0.0)
            score = np.maximum(score, np.clip(reid, 1e-6, 1.0) * ok)
        return score

    # ---------------------------------------------------------------------------------------------- propagation
    def _flow_scale(self, width: int) -> float:
        return min(1.0, self.flow_width / float(width))

    def _gray(self, image_bgr: np.ndarray) -> np.ndarray:
        import cv2

        image = np.asarray(image_bgr)
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        s = self._flow_scale(gray.shape[1])
        if s < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * s)), max(1, round(gray.shape[0] * s))),
                              interpolation=cv2.INTER_AREA)
        return gray

    @staticmethod
    def _points(faces: Faces) -> np.ndarray:
        """(n, 14, 2): the 5 landmarks then a 3x3 grid over the central half of each box."""
        g = np.array([0.25, 0.5, 0.75])
        gx, gy = np.meshgrid(g, g)
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (9, 2) box fractions
        xy = faces.xyxy.astype(np.float64)
        wh = xy[:, 2:] - xy[:, :2]
        interior = xy[:, None, :2] + grid[None] * wh[:, None]
        return np.concatenate([faces.landmarks.astype(np.float64), interior], axis=1)

    def propagate(self, image_bgr: np.ndarray, frame_index: int) -> Faces:
        """Move the last faces to this frame with pyramidal Lucas-Kanade flow, keeping IDs and scores.

        Faces whose flow fails (fewer than ``min_flow_fraction`` of their points pass the forward-backward check,
        or whose centre leaves the frame) are dropped until the next detection.
        """
        import cv2

        frame_index = int(frame_index)
        gray = self._gray(image_bgr)
        faces = self._last_faces
        if len(faces) == 0:
            self._prev_gray, self._last_frame = gray, frame_index
            return Faces.empty()
        if self._prev_gray is None:
            raise RuntimeError("Tracker.propagate() needs the detection frame: call "
                               "update(faces, frame_index, image_bgr=frame.image) on detection frames")
        if gray.shape != self._prev_gray.shape:
            raise ValueError(f"frame size changed from {self._prev_gray.shape} to {gray.shape} between frames")
        h, w = np.asarray(image_bgr).shape[:2]
        s = self._flow_scale(w)
        pts = self._points(faces)  # frame pixels
        n, k = pts.shape[:2]
        p0 = (pts * s).reshape(-1, 1, 2).astype(np.float32)
        lk = dict(winSize=(21, 21), maxLevel=3,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self._prev_gray, gray, p0, None, **lk)
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(gray, self._prev_gray, p1, None, **lk)
        fb = np.linalg.norm((p0 - p0b).reshape(-1, 2), axis=1)
        good = ((st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.flow_max_error)).reshape(n, k)
        new_pts = p1.reshape(n, k, 2).astype(np.float64) / s

        keep, boxes, lms = [], [], []
        for i in range(n):
            g = good[i]
            if g.sum() < max(2, int(np.ceil(self.min_flow_fraction * k))):
                continue
            old, new = pts[i][g], new_pts[i][g]
            shift = np.median(new - old, axis=0)
            d_old = np.linalg.norm(old[:, None] - old[None], axis=2)
            d_new = np.linalg.norm(new[:, None] - new[None], axis=2)
            valid = d_old > 1e-3 * max(w, h)
            scale = float(np.clip(np.median(d_new[valid] / d_old[valid]), 0.8, 1.25)) if valid.any() else 1.0
            box = faces.xyxy[i].astype(np.float64)
            centre = (box[:2] + box[2:]) / 2
            new_centre = centre + shift
            if not (0 <= new_centre[0] < w and 0 <= new_centre[1] < h):
                continue
            half = (box[2:] - box[:2]) / 2 * scale
            new_box = np.concatenate([new_centre - half, new_centre + half])
            lm = faces.landmarks[i].astype(np.float64)
            moved = new_centre + (lm - centre) * scale  # similarity estimate for landmarks that failed
            lm_good = g[:5]
            moved[lm_good] = new_pts[i, :5][lm_good]
            keep.append(i)
            boxes.append(new_box)
            lms.append(moved)
        if keep:
            keep_arr = np.asarray(keep)
            xyxy = np.asarray(boxes)
            xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
            xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
            out = Faces(xyxy, np.asarray(lms), faces.scores[keep_arr], faces.track_ids[keep_arr])
        else:
            out = Faces.empty()
        for box, tid in zip(out.xyxy, out.track_ids):
            t = self.tracks.get(int(tid))
            if t is not None:
                t.move_to(box.astype(np.float64), frame_index, self.velocity_smoothing)
        dropped = len(faces) - len(out)
        if dropped:
            log.debug("frame %d: optical flow lost %d of %d faces", frame_index, dropped, len(faces))
        self._last_faces = out
        self._prev_gray, self._last_frame = gray, frame_index
        return out
