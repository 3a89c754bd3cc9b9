"""Tracker: stable IDs through crossings, misses and fast motion; fresh IDs; optical-flow propagation."""
from __future__ import annotations

import numpy as np
import pytest

from rtfer.tracking import Tracker, iou_matrix
from rtfer.types import Faces
from bench_helpers import load_benchmark


def _faces(boxes, scores=None) -> Faces:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    lms = np.stack([np.stack([cx + dx, cy + dy], 1) for dx, dy in
                    [(-10, -8), (10, -8), (0, 2), (-8, 12), (8, 12)]], 1) if n else np.zeros((0, 5, 2))
    return Faces(boxes, lms, np.full(n, 0.9) if scores is None else scores)


def _box(x, y, size=60):
    return [x, y, x + size, y + size]


def test_iou_matrix():
    iou = iou_matrix(np.array([_box(0, 0, 10)]), np.array([_box(0, 0, 10), _box(5, 0, 10), _box(50, 50, 10)]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def test_crossing_trajectories_keep_their_ids():
    rng = np.random.default_rng(0)
    tracker = Tracker()
    id_a = id_b = None
    for f in range(41):
        a, b = _box(10 * f, 100), _box(395 - 10 * f, 102)  # cross head-on between frames 19 and 20
        order = rng.permutation(2)  # detection order must not matter
        out = tracker.update(_faces(np.array([a, b])[order]), f)
        assert len(out) == 2 and len(set(out.track_ids.tolist())) == 2
        got_a = int(out.track_ids[np.argmin(np.abs(out.xyxy[:, 0] - a[0]) + np.abs(out.xyxy[:, 1] - a[1]))])
        got_b = int(out.track_ids[np.argmin(np.abs(out.xyxy[:, 0] - b[0]) + np.abs(out.xyxy[:, 1] - b[1]))])
        if f == 0:
            id_a, id_b = got_a, got_b
        assert (got_a, got_b) == (id_a, id_b), f"IDs swapped at frame {f}"


def test_missed_detections_keep_the_id():
    tracker = Tracker(max_age_frames=30)
    ids = []
    for f in range(30):
        if 10 <= f < 16:  # six frames without a detection
            assert len(tracker.update(Faces.empty(), f)) == 0
            continue
        ids.append(int(tracker.update(_faces([_box(100 + 2 * f, 50)]), f).track_ids[0]))
    assert len(set(ids)) == 1


def test_fast_accelerating_face_keeps_its_id():
    tracker = Tracker()
    x, ids = 0.0, []
    for f, speed in enumerate([4, 8, 16, 32, 40, 40, 40, 40, 40, 40]):
        x += speed  # 40 px/frame on a 60 px box: IoU of consecutive boxes is 0.2 < iou_threshold
        ids.append(int(tracker.update(_faces([_box(x, 200)]), f).track_ids[0]))
    assert len(set(ids)) == 1


def test_new_faces_get_fresh_ids_that_are_never_reused():
    tracker = Tracker(max_age_frames=5)
    first = int(tracker.update(_faces([_box(0, 0)]), 0).track_ids[0])
    out = tracker.update(_faces([_box(0, 0), _box(300, 300)]), 1)
    assert set(out.track_ids.tolist()) == {first, first + 1}
    for f in range(2, 12):  # both leave for longer than max_age
        tracker.update(Faces.empty(), f)
    assert tracker.tracks == {}
    back = tracker.update(_faces([_box(0, 0)]), 12)
    assert int(back.track_ids[0]) not in (first, first + 1)


def test_low_score_detections_only_extend_active_tracks():
    tracker = Tracker(high_score=0.5, low_score=0.1)
    tid = int(tracker.update(_faces([_box(100, 100)]), 0).track_ids[0])
    out = tracker.update(_faces([_box(102, 100), _box(400, 400)], np.array([0.3, 0.3])), 1)
    assert out.track_ids.tolist() == [tid]  # the weak lone detection neither starts a track nor survives
    np.testing.assert_allclose(out.xyxy[0], _box(102, 100))
    out = tracker.update(_faces([_box(104, 100)], np.array([0.05])), 2)
    assert len(out) == 0  # below low_score


def test_state_stays_bounded():
    rng = np.random.default_rng(1)
    tracker = Tracker(max_age_frames=10)
    for f in range(300):
        boxes = [_box(*rng.uniform(0, 2000, 2), size=40) for _ in range(5)]  # five fresh faces every frame
        tracker.update(_faces(boxes), f)
        assert len(tracker.tracks) <= 5 * (10 + 1)


def test_frame_index_going_back_resets():
    tracker = Tracker()
    tracker.update(_faces([_box(0, 0)]), 10)
    out = tracker.update(_faces([_box(500, 500)]), 0)
    assert len(tracker.tracks) == 1 and len(out) == 1


# --------------------------------------------------------------------------- propagation

@pytest.fixture(scope="module")
def detected(group_photo):
    from rtfer.detection import create_detector

    return create_detector("centerface").detect(group_photo)


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    import cv2

    m = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def test_propagate_moves_boxes_and_landmarks_by_the_shift(group_photo, detected):
    tracker = Tracker()
    faces = tracker.update(detected, 0, image_bgr=group_photo)
    assert len(faces) >= 5
    total = np.zeros(2)
    image = group_photo
    for f, (dx, dy) in enumerate([(7, -4), (5, 3)], start=1):
        total += (dx, dy)
        image = _shift(image, dx, dy)
        moved = tracker.propagate(image, f)
        assert moved.track_ids.tolist() == faces.track_ids.tolist()
        np.testing.assert_allclose(moved.scores, faces.scores)
        np.testing.assert_allclose(moved.xyxy, faces.xyxy + np.tile(total, 2), atol=1.5)
        np.testing.assert_allclose(moved.landmarks, faces.landmarks + total, atol=1.5)
    # the next detection keeps the IDs (tracks followed the flow)
    redetected = tracker.update(Faces(detected.xyxy + np.tile(total, 2), detected.landmarks + total,
                                      detected.scores), 3, image_bgr=image)
    assert sorted(redetected.track_ids.tolist()) == sorted(faces.track_ids.tolist())


def test_propagate_drops_faces_whose_flow_fails(group_photo, detected):
    tracker = Tracker()
    tracker.update(detected, 0, image_bgr=group_photo)
    assert len(tracker.propagate(np.zeros_like(group_photo), 1)) == 0  # nothing to follow on a blank frame
    assert len(tracker.propagate(group_photo, 2)) == 0  # lost until the next detection


def test_propagate_needs_the_detection_frame(detected):
    tracker = Tracker()
    tracker.update(detected, 0)
    with pytest.raises(RuntimeError, match="image_bgr"):
        tracker.propagate(np.zeros((10, 10, 3), np.uint8), 1)
    empty = Tracker()
    empty.update(Faces.empty(), 0)
    assert len(empty.propagate(np.zeros((10, 10, 3), np.uint8), 1)) == 0


# --------------------------------------------------------------------------- re-identification, carried boxes

def _scene(boxes_colours, shape=(360, 640)) -> np.ndarray:
    """A grey frame with a filled square per (box, BGR colour)."""
    image = np.full((*shape, 3), 90, np.uint8)
    for box, colour in boxes_colours:
        x0, y0, x1, y1 = (int(v) for v in box)
        image[y0:y1, x0:x1] = colour
    return image


def test_a_face_missed_for_a_while_is_reidentified_near_where_it_was():
    tracker = Tracker(max_age_frames=60)
    colour = (40, 120, 200)
    tid = None
    for f in range(5):  # a steady face...
        box = _box(200, 100)
        out = tracker.update(_faces([box]), f, image_bgr=_scene([(box, colour)]))
        tid = int(out.track_ids[0]) if tid is None else tid
        assert out.track_ids.tolist() == [tid]
    for f in range(5, 35):  # ...missed for a second while it drifts 35 px (IoU with its last box 0.3 -> no match)
        assert len(tracker.update(Faces.empty(), f, image_bgr=_scene([]))) == 0
        assert len(tracker.propagate(_scene([]), f)) == 0  # a lost track is never output (drawn, classified)
    box = _box(235, 110)
    out = tracker.update(_faces([box]), 35, image_bgr=_scene([(box, colour)]))
    assert out.track_ids.tolist() == [tid] and tracker.reidentified == 1


def test_reidentification_needs_a_similar_appearance():
    def run(colour_after):
        tracker = Tracker()
        box = _box(200, 100)
        first = int(tracker.update(_faces([box]), 0, image_bgr=_scene([(box, (40, 120, 200))])).track_ids[0])
        for f in range(1, 10):
            tracker.update(Faces.empty(), f, image_bgr=_scene([]))
        box = _box(230, 100)  # half a box away: only re-identification can match it
        return first, int(tracker.update(_faces([box]), 10, image_bgr=_scene([(box, colour_after)])).track_ids[0])

    first, again = run((40, 120, 200))
    assert again == first
    first, other = run((200, 60, 30))  # somebody else sat down there
    assert other != first
    # without frames there is no appearance to compare: position alone re-identifies
    tracker = Tracker()
    first = int(tracker.update(_faces([_box(200, 100)]), 0).track_ids[0])
    tracker.update(Faces.empty(), 5)
    assert int(tracker.update(_faces([_box(230, 100)]), 10).track_ids[0]) == first
    tracker = Tracker(reid_distance=0.0)  # off: IoU only
    first = int(tracker.update(_faces([_box(200, 100)]), 0).track_ids[0])
    tracker.update(Faces.empty(), 5)
    assert int(tracker.update(_faces([_box(240, 100)]), 10).track_ids[0]) != first


def test_reidentification_does_not_take_a_face_from_its_own_track():
    # two faces side by side, both detected: each keeps its ID even though both are within reid_distance
    tracker = Tracker()
    a, b = _box(100, 100, 40), _box(150, 100, 40)
    ids0 = tracker.update(_faces([a, b]), 0).track_ids.tolist()
    for f in range(1, 20):
        order = [1, 0] if f % 2 else [0, 1]
        out = tracker.update(_faces(np.array([a, b])[order]), f)
        assert out.track_ids.tolist() == [ids0[i] for i in order]


def test_prediction_keeps_the_box_size_and_stops_extrapolating():
    tracker = Tracker(max_predict_frames=5)
    for f in range(4):
        tracker.update(_faces([[100 + 4 * f, 100, 160 + 4 * f + f, 160 + f]]), f)  # moving right, growing a bit
    (track,) = tracker.tracks.values()
    p10, p100 = track.predict(13), track.predict(103)
    np.testing.assert_allclose(p10[2:] - p10[:2], track.box[2:] - track.box[:2])  # no shape drift
    np.testing.assert_allclose(p10, p100)  # at most 5 frames of extrapolation


def test_a_carried_box_is_dropped_when_no_detection_confirms_it(group_photo, detected):
    tracker = Tracker()
    faces = tracker.update(detected, 0, image_bgr=group_photo)
    assert len(tracker.propagate(group_photo, 1)) == len(faces)  # carried by flow between detections
    gone = Faces(detected.xyxy[1:], detected.landmarks[1:], detected.scores[1:])  # face 0 no longer detected
    out = tracker.update(gone, 2, image_bgr=group_photo)
    assert int(faces.track_ids[0]) not in out.track_ids.tolist()  # not drawn, not classified
    assert len(tracker.propagate(group_photo, 3)) == len(out)  # and not carried any further
    back = tracker.update(detected, 4, image_bgr=group_photo)  # it comes back: same ID
    assert sorted(back.track_ids.tolist()) == sorted(faces.track_ids.tolist())


def test_tracking_benchmark_counts_ids_jumps_and_carried_boxes():
    bench = load_benchmark("tracking_stability")
    frames = []
    for k in range(30):  # 30 fps; id 1 steady all along; id 2 for 0.2 s; id 3 jumps onto another face at frame 20
        ids, boxes, conf = [1], [_box(100, 100)], [k % 3 == 0]
        if k < 6:
            ids.append(2), boxes.append(_box(300, 100)), conf.append(True)
        if k >= 10:
            ids.append(3), boxes.append(_box(500 if k < 20 else 400, 100)), conf.append(k < 15 or k % 3 == 0)
        frames.append((k, k / 30, np.array(ids), np.array(boxes, np.float32), np.array(conf)))
    st = bench.id_stats(frames, every=3, persons=2)
    assert (st["ids"], st["ids_0.5s"], st["per_person"]) == (3, 2, 1.0)
    assert st["jumps"] == 1 and st["rows"] == 30 + 6 + 20
    assert st["carried"] == 0  # confirmed every third frame: nothing carried beyond --every
    frames[25] = (25, 25 / 30, np.array([1]), np.array([_box(100, 100)], np.float32), np.array([False]))
    long_gap = [(k, t, ids, b, np.zeros(len(ids), bool) if k > 3 else c) for k, t, ids, b, c in frames]
    assert bench.id_stats(long_gap, every=3)["carried_max"] > 20


def test_linear_assignment_matches_scipy_on_random_and_rectangular_matrices():
    """The tracker's own Hungarian method (no scipy import before the first frame) finds an optimal assignment."""
    from scipy.optimize import linear_sum_assignment

    from rtfer.tracking import linear_assignment

    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 5), (5, 1), (3, 3), (7, 4), (4, 9), (20, 20), (50, 47)]
    for n, m in shapes * 5:
        cost = rng.random((n, m))
        if rng.random() < 0.3:
            cost = np.round(cost, 1)  # ties
        rows, cols = linear_assignment(cost)
        ref_rows, ref_cols = linear_sum_assignment(cost)
        assert len(rows) == min(n, m) and len(set(cols.tolist())) == len(cols)
        assert list(rows) == sorted(rows) and len(set(rows.tolist())) == len(rows)
        assert cost[rows, cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum(), abs=1e-9), (n, m)
    rows, cols = linear_assignment(np.zeros((0, 3)))
    assert rows.size == cols.size == 0
    with pytest.raises(ValueError):
        linear_assignment(np.array([[np.inf]]))


def test_tracking_never_imports_scipy():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from rtfer.tracking import Tracker; from rtfer.types import Faces; "
            "t = Tracker(); b = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32); "
            "f = Faces(b, np.zeros((2, 5, 2), np.float32), np.array([0.9, 0.9], np.float32)); "
            "t.update(f, 0); t.update(f, 1); print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _shot(seed: int, faces=()) -> np.ndarray:
    """A 480x640 frame of large grey blocks (one random pattern per seed: another shot) with squares at ``faces``."""
    img = np.random.default_rng(seed).integers(0, 255, (6, 8, 1), dtype=np.uint8).repeat(80, 0).repeat(80, 1)
    img = np.ascontiguousarray(img.repeat(3, 2))
    for b in faces:
        x0, y0, x1, y1 = (int(v) for v in b)
        img[y0:y1, x0:x1] = 128
    return img


def test_face_hidden_for_seconds_keeps_its_id_within_a_shot():
    tracker = Tracker()
    box = _box(200, 150)
    scene = _shot(0, [box])
    first = int(tracker.update(_faces([box]), 0, image_bgr=scene).track_ids[0])
    for f in range(3, 60, 3):  # 2 s at 30 fps without a detection (someone walked in front), same shot
        assert len(tracker.update(Faces.empty(), f, image_bgr=scene)) == 0
    back = tracker.update(_faces([_box(204, 152)]), 60, image_bgr=scene)
    assert int(back.track_ids[0]) == first and tracker.scene_ended == 0


def test_a_shot_change_ends_every_lost_track():
    box = _box(200, 150)
    tracker = Tracker()
    first = int(tracker.update(_faces([box]), 0, image_bgr=_shot(0, [box])).track_ids[0])
    for f in (3, 6):  # the face turns away: lost, not ended (the frame is still its shot)
        tracker.update(Faces.empty(), f, image_bgr=_shot(0))
    assert list(tracker.tracks) == [first]
    back = tracker.update(_faces([box]), 33, image_bgr=_shot(1, [box]))  # the next shot: another face, same place
    assert int(back.track_ids[0]) != first and tracker.scene_ended == 1 and first not in tracker.tracks
    fade = Tracker()  # a face seen on the previous detection frame continues through a cut (a fade, a flash)
    tid = int(fade.update(_faces([box]), 0, image_bgr=_shot(0, [box])).track_ids[0])
    assert int(fade.update(_faces([box]), 3, image_bgr=_shot(2, [box])).track_ids[0]) == tid
    never = Tracker(cut_threshold=None)
    tid = int(never.update(_faces([box]), 0, image_bgr=_shot(0, [box])).track_ids[0])
    never.update(Faces.empty(), 3, image_bgr=np.zeros((480, 640, 3), np.uint8))
    assert int(never.update(_faces([box]), 30, image_bgr=_shot(1, [box])).track_ids[0]) == tid
    with pytest.raises(ValueError, match="cut_threshold"):
        Tracker(cut_threshold=0)
