"""Smoothing maths, stability metrics and the smoothing_stability benchmark's core on a synthetic CSV."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from rtfer.labels import CLASSES
from rtfer.smoothing import (EMASmoother, HMMSmoother, calibrate, ema_half_life, hmm_lambda, hmm_p_stay,
                             make_smoother)
from rtfer.stability import (label_switches, label_switches_per_second, mean_total_variation, stability,
                             step_lag_frames, step_sequence)
from rtfer.types import EmotionScores, Faces
from bench_helpers import load_benchmark

REF = 1 / 30


def _onehotish(cls: int, conf: float) -> np.ndarray:
    p = np.full(7, (1 - conf) / 6)
    p[cls] = conf
    return p


def _random_probs(rng, n):
    p = rng.random((n, 7)) + 1e-3
    return p / p.sum(1, keepdims=True)


# -- mapping ---------------------------------------------------------------------------------------------------------
def test_strength_mapping_is_documented_values():
    assert ema_half_life(0.0) == 0.0 and ema_half_life(0.5) == pytest.approx(0.2) and ema_half_life(1) == 0.4
    assert hmm_lambda(0.0) == 0.0
    assert hmm_lambda(0.5) == pytest.approx(0.99) and hmm_lambda(1.0) == pytest.approx(0.9999)
    assert hmm_p_stay(0.0) == pytest.approx(1 / 7)
    assert hmm_p_stay(0.5) == pytest.approx(0.99 + 0.01 / 7)
    with pytest.raises(ValueError, match="strength"):
        make_smoother("ema", 1.5)
    with pytest.raises(ValueError, match="unknown smoothing method 'kalman'"):
        make_smoother("kalman")


# -- EMA ---------------------------------------------------------------------------------------------------------------
def test_ema_closed_form():
    sm = make_smoother("ema", 0.5)
    h = sm.half_life_s
    assert isinstance(sm, EMASmoother) and h == pytest.approx(0.2)
    p0, p1 = _onehotish(6, 0.9), _onehotish(3, 0.9)
    out0 = sm.update([7], p0[None], 10.0)
    np.testing.assert_allclose(out0[0], p0, atol=1e-6)  # first observation initialises
    out1 = sm.update([7], p1[None], 10.0 + 0.1)
    alpha = 1 - 0.5 ** (0.1 / h)
    np.testing.assert_allclose(out1[0], (1 - alpha) * p0 + alpha * p1, atol=1e-6)
    # after exactly one half-life of constant p1 (several frames), the weight on p0 is 0.5 ** (total / h)
    t = 10.1
    for _ in range(5):
        t += 0.04
        out = sm.update([7], p1[None], t)
    w0 = 0.5 ** ((t - 10.0) / h)
    np.testing.assert_allclose(out[0], w0 * p0 + (1 - w0) * p1, atol=1e-6)


def test_ema_is_time_aware_across_frame_rates():
    p0, p1 = _onehotish(0, 0.8), _onehotish(4, 0.8)
    results = []
    for fps in (30.0, 10.0, 5.0):
        sm = make_smoother("ema", 0.5)
        sm.update([1], p0[None], 0.0)
        n = int(round(fps * 0.6))
        for k in range(1, n + 1):
            out = sm.update([1], p1[None], k / fps)
        results.append(out[0])
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(results[0], results[2], atol=1e-6)


# -- HMM ---------------------------------------------------------------------------------------------------------------
def test_hmm_posterior_two_step_hand_computed():
    sm = make_smoother("hmm", 0.25, emission_power=1.0)  # lam = 1 - 10**-1 = 0.9, untempered
    assert isinstance(sm, HMMSmoother) and sm.lam == pytest.approx(0.9)
    p1 = np.array([0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    p2 = np.array([0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1])
    out1 = sm.update([3], p1[None], 0.0)
    np.testing.assert_allclose(out1[0], p1, atol=1e-6)  # flat prior x likelihood
    np.testing.assert_allclose(sm.belief(3), p1, atol=1e-6)
    sm.update([3], p2[None], REF)
    out2 = sm.belief(3)[None]
    # predicted: class0 0.9*0.4 + 0.1/7 = 0.374285714; others 0.9*0.1 + 0.1/7 = 0.104285714
    # times p2: 0.0374285714, 0.0417142857, 5 x 0.0104285714; total 0.1312857143
    expected = np.array([0.0374285714, 0.0417142857] + [0.0104285714] * 5) / 0.1312857143
    np.testing.assert_allclose(out2[0], expected, atol=1e-6)
    assert out2[0].argmax() == 1 and out2[0][0] == pytest.approx(0.28509, abs=1e-4)


def test_hmm_gap_leaks_and_weighs_evidence_by_elapsed_steps():
    # after a gap of k reference steps the transition is T**k and the observation counts as k steps of evidence
    # (capped), so classifying every 3rd frame (--classify-rate) gathers evidence as fast per second as every frame
    p1, p2 = _onehotish(2, 0.6), _onehotish(5, 0.6)
    sm = make_smoother("hmm", 0.5)
    sm.update([0], p1[None], 0.0)
    sm.update([0], p2[None], 3 * REF)
    prior = sm.transition(3 * REF).T @ p1 ** sm.emission_power / np.sum(p1 ** sm.emission_power)
    post = prior * p2 ** (sm.emission_power * 3)
    np.testing.assert_allclose(sm.belief(0), post / post.sum(), atol=1e-6)
    capped = make_smoother("hmm", 0.5)
    capped.update([0], p1[None], 0.0)
    capped.update([0], p2[None], 1.5)  # 45 steps: evidence capped at HMM_MAX_EVIDENCE_STEPS
    from rtfer.smoothing import HMM_MAX_EVIDENCE_STEPS

    prior = capped.transition(1.5).T @ p1 ** sm.emission_power / np.sum(p1 ** sm.emission_power)
    post = prior * p2 ** (sm.emission_power * HMM_MAX_EVIDENCE_STEPS)
    np.testing.assert_allclose(capped.belief(0), post / post.sum(), atol=1e-6)
    # and a long gap forgets the past more than a short one
    short = make_smoother("hmm", 0.5)
    short.update([0], p1[None], 0.0)
    short.update([0], p2[None], REF)
    assert capped.belief(0)[5] > short.belief(0)[5]


def test_strength_zero_is_passthrough_for_all_methods():
    rng = np.random.default_rng(1)
    for method in ("none", "ema", "hmm"):
        sm = make_smoother(method, 0.0)
        for k in range(4):
            p = _random_probs(rng, 3)
            np.testing.assert_allclose(sm.update([0, 1, 2], p, k * REF), p, atol=1e-6)


# -- shared behaviour ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["none", "ema", "hmm"])
def test_rows_sum_to_one_and_shapes(method):
    rng = np.random.default_rng(0)
    sm = make_smoother(method, 0.7)
    for k in range(20):
        ids = rng.permutation(6)[: rng.integers(0, 6)]
        out = sm.update(ids, _random_probs(rng, len(ids)), k * REF)
        assert out.shape == (len(ids), 7) and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    empty = sm.update(np.zeros(0, int), np.zeros((0, 7)), 1.0)
    assert empty.shape == (0, 7)
    with pytest.raises(ValueError, match="expected track_ids"):
        sm.update([1, 2], np.full((1, 7), 1 / 7), 2.0)


@pytest.mark.parametrize("method", ["ema", "hmm"])
def test_untracked_rows_pass_through(method):
    sm = make_smoother(method, 0.9)
    a, b = _onehotish(0, 0.9), _onehotish(1, 0.9)
    sm.update([-1, 4], np.stack([a, a]), 0.0)
    out = sm.update([-1, 4], np.stack([b, b]), REF)
    np.testing.assert_allclose(out[0], b, atol=1e-6)  # id -1: not smoothed
    assert out[1][0] > 0.3  # tracked: remembers class 0 (raw b gives it 0.017)
    assert sm.track_ids == [4]


@pytest.mark.parametrize("method", ["ema", "hmm"])
def test_tracks_are_forgotten_after_max_age(method):
    sm = make_smoother(method, 1.0, max_age_s=1.0)
    a, b = _onehotish(0, 0.9), _onehotish(1, 0.9)
    sm.update([1, 2], np.stack([a, a]), 0.0)
    sm.update([2], b[None], 0.8)
    assert sm.track_ids == [1, 2]
    out = sm.update([1, 2], np.stack([b, b]), 1.5)  # track 1 unseen for 1.5 s > 1.0: starts fresh
    np.testing.assert_allclose(out[0], b, atol=1e-6)
    assert len(sm) == 2
    sm.update([], np.zeros((0, 7)), 5.0)
    assert len(sm) == 0


def test_time_going_back_resets_state():
    sm = make_smoother("ema", 1.0)
    a, b = _onehotish(0, 0.9), _onehotish(1, 0.9)
    sm.update([1], a[None], 5.0)
    out = sm.update([1], b[None], 1.0)  # seek backwards
    np.testing.assert_allclose(out[0], b, atol=1e-6)


def test_apply_stage_form():
    sm = make_smoother("hmm", 0.5)
    faces = Faces(np.zeros((1, 4)), np.zeros((1, 5, 2)), np.ones(1), np.array([3]))
    res = sm.apply(faces, EmotionScores(_onehotish(2, 0.5)[None]), 0.0)
    assert isinstance(res, EmotionScores) and res.probs.shape == (1, 7)


# -- stability metrics -------------------------------------------------------------------------------------------------
def test_stability_metrics_on_hand_made_sequences():
    a, b = _onehotish(0, 0.7), _onehotish(1, 0.7)
    seq = np.stack([a, a, b, a, b, b])  # labels 0 0 1 0 1 1 -> 3 switches
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    assert label_switches(seq) == 3
    assert label_switches_per_second(seq, times) == pytest.approx(1.0)
    # TV between a and b = 0.5 * (0.65 + 0.65) = 0.65; 3 of the 5 transitions change
    assert mean_total_variation(seq) == pytest.approx(3 * 0.65 / 5)
    st = stability(seq, times)
    assert (st.frames, st.duration_s) == (6, 3.0)
    assert math.isnan(label_switches_per_second(seq[:1], times[:1]))
    assert math.isnan(mean_total_variation(seq[:1]))
    assert mean_total_variation(np.tile(a, (4, 1))) == 0.0


def test_step_lag():
    probs, times = step_sequence("neutral", "happiness", n_before=5, n_after=7)
    assert probs.shape == (12, 7) and probs[4].argmax() == 6 and probs[5].argmax() == 3
    assert step_lag_frames(lambda: make_smoother("none")) == 0
    # without hysteresis the 0.8 vs 0.0333 peaks cross when the old weight 0.5 ** (k / 30 / 0.2) drops below 1/2:
    # k >= 6 -> lag 5; the default margin (the new class must lead by e^0.25) adds two frames, within 8
    assert step_lag_frames(lambda: make_smoother("ema", 0.5, margin=0.0), fps=30) == 5
    ema = step_lag_frames(lambda: make_smoother("ema", 0.5), fps=30)
    assert ema == 7
    assert step_lag_frames(lambda: make_smoother("ema", 1.0)) > ema
    hmm_lags = [step_lag_frames(lambda: make_smoother("hmm", s)) for s in (0.25, 0.5, 1.0)]
    assert hmm_lags == sorted(hmm_lags) and hmm_lags[-1] > 0
    assert step_lag_frames(lambda: make_smoother("ema", 1.0), n_after=3) is None


def test_smoothing_reduces_flicker_on_noisy_sequence():
    rng = np.random.default_rng(0)
    T = 240
    base = np.where(np.arange(T) < 120, 6, 3)
    logits = rng.normal(0, 1.0, (T, 7))
    logits[np.arange(T), base] += 1.5
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    times = np.arange(T) / 30
    raw_sw = label_switches_per_second(raw, times)
    for method in ("ema", "hmm"):
        sm = make_smoother(method, 0.5)
        smooth = np.vstack([sm.update([0], r[None], t) for r, t in zip(raw, times)])
        assert label_switches_per_second(smooth, times) < raw_sw / 5
        assert mean_total_variation(smooth) < mean_total_variation(raw) / 5
        assert np.mean(smooth.argmax(1) == base) > np.mean(raw.argmax(1) == base)


# -- benchmark script core ---------------------------------------------------------------------------------------------
def _load_benchmark():
    return load_benchmark("smoothing_stability")


def _write_csv(path: Path) -> None:
    cols = ["source", "frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", *CLASSES, "emotion",
            "confidence", "sentiment5", "sentiment3", "valence", *(f"raw_{c}" for c in CLASSES), "raw_emotion"]
    a, b = _onehotish(6, 0.6), _onehotish(3, 0.6)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for k in range(6):
            raw = a if k % 2 == 0 else b  # flickers every frame
            sm = a  # smoothed holds
            for fid in ("1", "2"):
                w.writerow(["clip.mp4", k, f"{k * 0.1:.3f}", fid, 1, 2, 3, 4, 0.9, *sm, "neutral", 0.6,
                            "neutral", "neutral", 0.0, *raw, "x"])
        w.writerow(["clip.mp4", 6, "0.600", "", "", "", "", "", "", *[""] * 7, "", "", "", "", "", *[""] * 7, ""])


def test_benchmark_core_on_synthetic_csv(tmp_path, capsys):
    bench = _load_benchmark()
    path = tmp_path / "t.csv"
    _write_csv(path)
    tls = bench.load_timelines(path)
    assert sorted((t.source, t.face_id) for t in tls) == [("clip.mp4", "1"), ("clip.mp4", "2")]
    assert tls[0].raw.shape == (6, 7) and np.allclose(tls[0].times, np.arange(6) * 0.1)
    rows = bench.stability_rows(tls)
    raw = next(r for r in rows if r["variant"] == "raw" and r["face_id"] == "1")
    sm = next(r for r in rows if r["variant"] == "csv" and r["face_id"] == "1")
    assert raw["switches_per_s"] == pytest.approx(5 / 0.5) and sm["switches_per_s"] == 0.0
    assert raw["mean_tv"] == pytest.approx(0.5 * (0.6 - 0.4 / 6) * 2) and sm["mean_tv"] == 0.0
    rows_all = bench.stability_rows(tls, resmooth_all=True)
    assert len(rows_all) == 2 * (2 + 2 * len(bench.STRENGTHS))
    assert bench.main([str(path), "--resmooth"]) == 0
    out = capsys.readouterr().out
    assert "switches_per_s" in out and "hmm@0.5" in out and "lag_frames" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("source,frame,time_s\nx,0,0\n")
    with pytest.raises(ValueError, match="missing columns"):
        bench.load_timelines(bad)


def test_benchmark_reads_what_csvsink_writes(tmp_path):
    from rtfer.sinks import CSVSink
    from rtfer.types import FrameResult

    bench = _load_benchmark()
    path = tmp_path / "sink.csv"
    sm = make_smoother("hmm", 0.5)
    rng = np.random.default_rng(3)
    with CSVSink(path, raw=True) as sink:
        for k in range(10):
            raw = _random_probs(rng, 2).astype(np.float32)
            faces = Faces(np.tile([[0, 0, 10, 10]], (2, 1)), np.zeros((2, 5, 2)), np.ones(2), np.array([4, 9]))
            smooth = sm.update(faces.track_ids, raw, k / 30)
            sink.append(FrameResult(k, k / 30, "v.mp4", faces, EmotionScores(raw), EmotionScores(smooth)))
    tls = bench.load_timelines(path)
    assert sorted(t.face_id for t in tls) == ["4", "9"] and all(len(t.times) == 10 for t in tls)
    rows = {(r["face_id"], r["variant"]): r for r in bench.stability_rows(tls)}
    assert rows[("4", "csv")]["mean_tv"] < rows[("4", "raw")]["mean_tv"]


def test_hmm_matches_explicit_transition_matrix_product():
    sm = make_smoother("hmm", 0.6)
    rng = np.random.default_rng(5)
    p = _random_probs(rng, 3)
    sm.update([1, 2, 3], p, 0.0)
    q = _random_probs(rng, 3)
    sm.update([3, 1, 2], q, REF)
    tau = sm.emission_power
    for tid, row, prev in zip((3, 1, 2), range(3), (2, 0, 1)):
        T = sm.transition(REF)
        np.testing.assert_allclose(T.sum(1), 1.0)
        start = p[prev] ** tau / np.sum(p[prev] ** tau)
        post = (T.T @ start) * q[row] ** tau
        np.testing.assert_allclose(sm.belief(tid), post / post.sum(), atol=1e-6)


# -- honest confidence and the HMM's reported probabilities --------------------------------------------------------
def test_hmm_reports_the_ema_estimate_with_the_filtered_label():
    sm = make_smoother("hmm", 0.5)
    ema = make_smoother("ema", 0.5, margin=0.0)  # the bare estimate
    rng = np.random.default_rng(2)
    a, b = _onehotish(6, 0.55), _onehotish(0, 0.55)
    for k in range(40):
        p = (a if k < 30 else b) + rng.normal(0, 0.01, 7).clip(-0.005, 0.005)
        p = p / p.sum()
        out = sm.update([1], p[None], k * REF)[0]
        est = ema.update([1], p[None], k * REF)[0]
        label = sm.label(1)
        assert int(out.argmax()) == label  # the label is the filter's state (with hysteresis)
        if int(est.argmax()) == label:
            np.testing.assert_allclose(out, est, atol=1e-6)  # the probabilities are the EMA's
        else:  # a tie the filter holds through: the two share their mass, the state 1e-4 ahead
            top = int(est.argmax())
            assert out[label] - out[top] == pytest.approx(1e-4, abs=1e-6)
            assert out[label] + out[top] == pytest.approx(est[label] + est[top], abs=1e-6)
    # confident consistent evidence does not saturate: the reported confidence stays the model's (0.55)
    assert out.max() < 0.6


def test_untempered_belief_saturates_but_reported_confidence_does_not():
    sm = make_smoother("hmm", 0.5, emission_power=1.0)
    p = _onehotish(3, 0.6)
    for k in range(60):
        out = sm.update([0], p[None], k * REF)
    assert sm.belief(0).max() > 0.99  # the filtered state belief: a decision, not a probability
    assert out[0].max() == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("method", ["ema", "hmm"])
def test_confidence_temperature_lowers_confidence_keeps_labels(method):
    rng = np.random.default_rng(4)
    plain = make_smoother(method, 0.5)
    cal = make_smoother(method, 0.5, confidence_temperature=3.0)
    for k in range(20):
        p = _random_probs(rng, 3) ** 3
        p /= p.sum(1, keepdims=True)
        a = plain.update([0, 1, -1], p, k * REF)
        b = cal.update([0, 1, -1], p, k * REF)
        assert (a.argmax(1) == b.argmax(1)).all()
        assert (b.max(1) <= a.max(1) + 1e-6).all()
        np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(calibrate(np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0]]), 1.0)[0, :3], [0.5, 0.25, 0.25])
    # softmax(log p / T): 0.5 ** (1/2) vs 0.25 ** (1/2) = 2:1
    q = calibrate(np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0]]), 2.0)[0]
    assert q[0] / q[1] == pytest.approx(np.sqrt(2), rel=1e-4)
    none = make_smoother("none", 0.5, confidence_temperature=3.0)
    p = _onehotish(2, 0.9)
    np.testing.assert_allclose(none.update([0], p[None], 0.0)[0], p, atol=1e-6)  # none is the model, untouched
    with pytest.raises(ValueError, match="confidence temperature"):
        make_smoother("hmm", 0.5, confidence_temperature=0.5)


def test_hold_returns_the_last_output_and_keeps_the_track_alive():
    sm = make_smoother("hmm", 0.5, max_age_s=1.0)
    p = _onehotish(4, 0.7)
    out = sm.update([5], p[None], 0.0)
    held = sm.hold([5, 9], 0.8)
    np.testing.assert_allclose(held[0], out[0])
    assert np.isnan(held[1]).all() and sm.has(5) and not sm.has(9)
    sm.hold([5], 1.6)  # held at 0.8 and 1.6: never unseen for more than max_age
    assert sm.has(5)
    sm.drop([5])
    assert not sm.has(5)


def test_defaults_meet_the_steady_and_step_targets_on_synthetic_sequences():
    """Default smoothing at the default classification rate: a steady near-tie (one person, one expression, the
    model split 0.45/0.40 with noise) switches <= 0.3 times per second on average, and a step is followed within
    8 frames at 30 fps."""
    from rtfer.pipeline import DEFAULT_CLASSIFY_RATE, ClassifySchedule

    def run(probs, times):
        sm, sched, ids = make_smoother("hmm", 0.5), ClassifySchedule(DEFAULT_CLASSIFY_RATE), np.zeros(1, np.int64)
        out = []
        for row, t in zip(probs, times):
            if sched.due(ids, t, sm)[0]:
                out.append(sm.update(ids, row[None], t)[0])
                sched.remember(ids, row[None])
            else:
                out.append(sm.hold(ids, t)[0])
        return np.array(out)

    T, times, rates = 300, np.arange(300) / 30, []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        base = np.full((T, 7), 0.15 / 5)
        base[:, 6], base[:, 0] = 0.45, 0.40
        noisy = np.clip(base + rng.normal(0, 0.05, (T, 7)), 1e-3, None)
        noisy /= noisy.sum(1, keepdims=True)
        assert label_switches_per_second(noisy, times) > 5  # raw flickers
        rates.append(label_switches_per_second(run(noisy, times), times))
    assert np.mean(rates) <= 0.3, rates
    for conf in (0.8, 0.5):
        for phase in range(3):
            probs, t = step_sequence("neutral", "happiness", n_before=30 + phase, n_after=30, confidence=conf)
            out = run(probs, t)
            lag = int(np.flatnonzero(out[30 + phase:].argmax(1) == 3)[0])
            assert lag <= 8, (conf, phase, lag)


def test_hysteresis_needs_a_margin_to_switch_and_follows_a_real_change():
    """A near tie that tips back and forth keeps the shown label; a class that leads the shown one by the margin
    (log belief) takes over; margin 0 is the plain filter."""
    from rtfer.smoothing import HMM_SWITCH_MARGIN, HMMSmoother

    assert HMM_SWITCH_MARGIN > 0
    times = np.arange(300) / 30
    rates = {0.0: [], HMM_SWITCH_MARGIN: []}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        lead = np.zeros(300)  # neutral vs sadness, the lead wandering around a tie (correlated from frame to frame)
        for k in range(1, 300):
            lead[k] = 0.8 * lead[k - 1] + rng.normal(0, 0.05)
        tie = np.full((300, 7), 0.02)
        tie[:, 6], tie[:, 4] = 0.45 - lead / 2, 0.45 + lead / 2
        tie = np.clip(tie, 1e-3, None)
        tie /= tie.sum(1, keepdims=True)
        for margin in rates:
            sm = HMMSmoother(0.5, margin=margin)
            out = np.array([sm.update([0], row[None], t)[0] for row, t in zip(tie, times)])
            rates[margin].append(label_switches_per_second(out, times))
    plain, held = np.mean(rates[0.0]), np.mean(rates[HMM_SWITCH_MARGIN])
    assert plain >= 0.5 and held <= min(0.3, plain / 3), rates
    sm = HMMSmoother(0.5)
    for k in range(30):
        sm.update([0], _onehotish(6, 0.8)[None], k * REF)
    b = sm.belief(0)
    assert sm.label(0) == 6 and b.argmax() == 6
    for k in range(30, 60):  # a real change: followed once the new class leads by the margin
        sm.update([0], _onehotish(3, 0.8)[None], k * REF)
        b = sm.belief(0)
        lead = np.log(b[3]) - np.log(b[6])
        if sm.label(0) == 3:
            assert lead >= HMM_SWITCH_MARGIN or k > 30
            break
        assert lead < HMM_SWITCH_MARGIN
    assert sm.label(0) == 3 and k - 30 <= 8
    with pytest.raises(ValueError, match="margin"):
        HMMSmoother(0.5, margin=-1)
    assert HMMSmoother(0.0, margin=5.0).margin == 0.0  # strength 0: no memory, no hysteresis


def test_default_confidence_is_the_pooled_per_frame_probability():
    """No clip-fitted flattening by default: frames of one face are one observation, so a steady face reports
    the model's per-frame probability (calibrated on the val crops), neither sharpened nor flattened."""
    from rtfer.smoothing import CONFIDENCE_TEMPERATURE

    assert CONFIDENCE_TEMPERATURE == 1.0
    sm = make_smoother("hmm", 0.5, confidence_temperature=CONFIDENCE_TEMPERATURE)
    p = _onehotish(3, 0.9)
    for k in range(90):
        out = sm.update([0], p[None], k * REF)[0]
    assert sm.belief(0).max() > 0.99  # the filter's belief would claim far more than one frame's evidence
    assert out.max() == pytest.approx(0.9, abs=1e-3)


# -- EMA hysteresis ------------------------------------------------------------------------------------------------
def _tie(a: str, b: str, lead: float) -> np.ndarray:
    """Two classes near a tie (``a`` ahead by ``lead``), the rest of the mass spread."""
    p = np.full(7, 0.02)
    p[CLASSES.index(a)], p[CLASSES.index(b)] = 0.45 + lead / 2, 0.45 - lead / 2
    return p / p.sum()


def test_ema_hysteresis_holds_a_near_tie_that_tips_back_and_forth():
    sm, bare = make_smoother("ema", 0.5), make_smoother("ema", 0.5, margin=0.0)
    labels, bare_labels = [], []
    for k in range(60):  # neutral and sadness alternate the lead every 3 frames, by 0.06
        p = _tie("neutral", "sadness", 0.06) if (k // 3) % 2 == 0 else _tie("sadness", "neutral", 0.06)
        labels.append(int(sm.update([1], p[None], k * REF)[0].argmax()))
        bare_labels.append(int(bare.update([1], p[None], k * REF)[0].argmax()))
    assert len(set(labels)) == 1 and sm.label(1) == CLASSES.index("neutral")  # the first label is kept
    assert sum(a != b for a, b in zip(bare_labels, bare_labels[1:])) >= 5  # without the margin it flickers


def test_ema_hysteresis_reports_the_held_label_as_a_tie_and_follows_a_real_change():
    sm, bare = make_smoother("ema", 0.5), make_smoother("ema", 0.5, margin=0.0)
    n, s = CLASSES.index("neutral"), CLASSES.index("sadness")
    for k in range(30):
        sm.update([1], _tie("neutral", "sadness", 0.3)[None], k * REF)
        bare.update([1], _tie("neutral", "sadness", 0.3)[None], k * REF)
    ties = 0
    for k in range(30, 60):  # sadness now leads clearly: the label follows within 8 frames
        out = sm.update([1], _tie("sadness", "neutral", 0.3)[None], k * REF)[0]
        est = bare.update([1], _tie("sadness", "neutral", 0.3)[None], k * REF)[0]
        assert int(out.argmax()) == sm.label(1)
        if sm.label(1) == n and int(est.argmax()) == s:  # held through a lead under the margin: reported as a tie
            ties += 1
            assert out[n] - out[s] == pytest.approx(1e-4, abs=1e-6)
            assert out[n] + out[s] == pytest.approx(est[n] + est[s], abs=1e-6)
        elif sm.label(1) == s:
            np.testing.assert_allclose(out, est, atol=1e-6)
    assert ties >= 1 and sm.label(1) == s
    assert step_lag_frames(lambda: make_smoother("ema", 0.5), confidence=0.5) <= 8  # a weak step too


def test_ema_margin_is_checked_and_strength_zero_keeps_no_hysteresis():
    with pytest.raises(ValueError, match="margin"):
        make_smoother("ema", 0.5, margin=-1)
    assert make_smoother("ema", 0.0, margin=3.0).margin == 0.0
    assert make_smoother("ema", 0.5).margin == pytest.approx(0.25)
