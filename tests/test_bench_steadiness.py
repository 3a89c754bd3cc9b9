"""The steadiness, calibration and tracker-comparison benchmark scripts on tiny synthetic data (no model, no video)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


_load = load_benchmark


def test_auroc_counts_pairs_and_ties():
    vc = _load("val_calibration")
    assert vc.auroc([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0]) == 1.0
    assert vc.auroc([0.2, 0.3, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert vc.auroc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts half
    assert vc.auroc([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0]) == pytest.approx(3 / 4)
    assert np.isnan(vc.auroc([0.9, 0.8], [1, 1]))


def test_val_figures_find_the_temperature_of_an_overconfident_model():
    vc = _load("val_calibration")
    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, 7, n)
    logits = rng.normal(0, 1, (n, 7))
    logits[np.arange(n), labels] += 1.5  # unit-variance scores: softmax(1.5 * logits) is the true posterior ...
    sharp = np.exp(3 * logits)  # ... so softmax(3 * logits) is overconfident by temperature 2
    probs = sharp / sharp.sum(1, keepdims=True)
    f = vc.figures(probs, labels)
    assert f["mean_conf"] > f["accuracy"] + 0.1 and 1.8 <= f["t_fit"] <= 2.2
    assert f["ece_t_cv"] < f["ece"] / 3
    rel = vc.reliability(probs, labels)
    assert sum(r["share"] for r in rel) == pytest.approx(1.0)


def test_neutral_valence_counts_only_the_neutral_majority_crops():
    vc = _load("val_calibration")
    from rtfer.labels import CLASSES

    neutral, sad = CLASSES.index("neutral"), CLASSES.index("sadness")
    f = vc.neutral_valence([-0.3, 0.0, 0.2, 0.1, -0.9], [neutral, neutral, neutral, neutral, sad])
    assert f["neutral_crops"] == 4 and f["valence_mean"] == pytest.approx(0.0) and f["valence_median"] == 0.05
    assert f["below_-0.1"] == 0.25 and f["above_+0.1"] == 0.25


def test_id_stats_counts_jumps_between_detection_frames():
    ts = _load("tracking_stability")
    box = np.array([[100, 100, 140, 140]], float)
    far = box + [60, 0, 60, 0]
    frames = [(0, 0.0, np.array([1]), box, np.ones(1, bool)), (3, 0.1, np.array([1]), box, np.ones(1, bool)),
              (6, 0.2, np.array([1]), far, np.ones(1, bool)),  # the ID jumped to another face between detections
              (30, 1.0, np.array([1]), box, np.ones(1, bool))]  # a re-identification after a gap: not a jump
    s = ts.id_stats(frames, every=3, persons=1)
    assert s["jumps"] == 1 and s["ids"] == 1 and s["ids_0.5s"] == 1 and s["per_person"] == 1.0
    assert ts.id_stats(frames, every=1, persons=1)["jumps"] == 0  # outputs 3 frames apart are not consecutive


def test_tracker_compare_hides_one_face_and_knows_its_trackers():
    tc = _load("tracker_compare")
    det = {"fps": 30.0, "time": np.arange(3) / 30, "counts": np.array([2, 2, 1]),
           "xyxy": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [1, 0, 11, 10], [50, 50, 60, 60], [2, 0, 12, 10]],
                            np.float32),
           "landmarks": np.zeros((5, 5, 2), np.float32), "scores": np.full(5, 0.9, np.float32)}
    got = [(i, len(f)) for i, f in tc.frame_faces(det, hide=[(1, 1, np.array([50, 50, 60, 60.0]))])]
    assert got == [(0, 2), (1, 1), (2, 1)]
    with pytest.raises(ValueError, match="unknown tracker"):
        tc.make_tracker("nope", 30.0, 3)
    assert tc.available("rtfer") is None


def test_member_agreement_tells_a_unanimous_misread_from_a_split_one():
    ma = _load("member_agreement")
    from rtfer.labels import CLASSES

    def one_hot(labels, p=0.8):
        out = np.full((len(labels), 7), (1 - p) / 6)
        out[np.arange(len(labels)), labels] = p
        return out

    # 4 frames of a clip labelled 0: frames 0-1 right; frame 2 wrong with both members and mirrors agreeing;
    # frame 3 wrong with the second member disagreeing
    members = np.stack([one_hot([0, 0, 3, 3]), one_hot([0, 0, 3, 5])])
    mirrored = np.stack([one_hot([0, 1, 3, 3]), one_hot([0, 0, 3, 5])])
    ensemble = (members[0] + members[1]) / 2
    row = ma.clip_figures(members, ensemble, 0, CLASSES, ma.agreement(members), ma.mirror_agreement(members, mirrored))
    assert row["frames"] == 4 and row["m0_acc"] == 0.5 and row["m1_acc"] == 0.5
    assert row["m0_top"] in (CLASSES[0], CLASSES[3]) and row["m0_conf"] == pytest.approx(0.8)
    assert row["members_agree"] == 0.75 and row["mirror_agree"] == 0.75  # frame 1: member 0's mirror differs
    right = ensemble.argmax(-1) == 0
    sep = {r["score"]: r for r in ma.separation(np.array([0.8, 0.8, 0.8, 0.6]), right,
                                                ma.agreement(members), ma.mirror_agreement(members, mirrored))}
    assert sep["confidence"]["auroc"] == pytest.approx(0.75)  # the unanimous misread ties the right frames
    assert sep["confidence x members_agree"]["auroc"] == pytest.approx(0.75)
    assert sep["confidence"]["wrong_frames"] == 2 and sep["confidence"]["wrong_where_all_agree"] == 0.5


def test_member_recorder_keeps_faces_and_mirrors_in_order():
    ma = _load("member_agreement")

    class Bundle:
        def member_probs(self, crops):
            x = crops[8].reshape(len(crops[8]), -1)[:, :7].astype(float)  # the first 7 pixels of each crop
            return [x, x + 1]

    crops = np.arange(2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    rec = ma.MemberRecorder(Bundle())
    out = rec({8: crops})
    assert np.array_equal(out[0], crops.reshape(2, -1)[:, :7])  # the pipeline gets the members' answer unchanged
    rec({8: crops[:1]})
    faces, mirrored = rec.take()
    assert faces.shape == (2, 3, 7) and mirrored.shape == (2, 3, 7)
    assert np.array_equal(mirrored[0, 0], crops[0, :, ::-1].reshape(-1)[:7])  # the mirror flips left and right
    assert rec.take()[0].shape[0] == 0  # taken once
