"""Choose the per-track classification rate (``--classify-rate K``) and the smoothing defaults on the fixture clips.

Replays the cached per-frame classifications (``benchmarks/fixture_tracks.py``; made on first use) through the
pipeline's own :class:`rtfer.pipeline.ClassifySchedule` and smoothers, so every figure is what ``rtfer analyze``
would write with that rate, without running the model again. Per rate K (0 = every frame) it prints:

- ``classified``: share of face rows that are classified (the classifier's cost relative to every frame);
- ``agree``: share of face rows whose smoothed label equals the every-frame run's smoothed label (same smoother);
- ``dominant``: labelled clips whose dominant smoothed label is the clip's label; ``right``: labelled frames right;
- ``steady_sw``: the largest label switches per second over the labelled (one-expression) clips;
- ``room_sw``: mean switches per second per classroom face (tracks of >= 1 s);
- ``lag8``/``lag5``: synthetic step neutral -> happiness at 30 fps (peak 0.8 / 0.5), frames until the label follows,
  worst over where the step falls between two classifications (target <= 8);
- ``conf``/``acc``/``ece``: mean smoothed confidence, frame accuracy and ECE on the labelled clips.

    python benchmarks/classify_rate.py                         # default bundle, default smoothing
    python benchmarks/classify_rate.py --smoothing ema --strength 0.5 --rates 0,15,10,8,6,5,4,3,2
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixture_tracks import DEFAULT_CACHE, DEFAULT_VIDEOS, ClipRows, collect  # noqa: E402

from rtfer.labels import CLASSES  # noqa: E402
from rtfer.stability import label_switches_per_second, step_sequence  # noqa: E402

DEFAULT_RATES = (0, 15, 10, 8, 6, 5, 4, 3, 2)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width confidence bins: sum over bins of (share of rows) * |mean confidence - accuracy|."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if len(confidence) == 0:
        return float("nan")
    idx = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(confidence[m].mean() - correct[m].mean())
    return float(ece)


def replay(times: np.ndarray, raw: np.ndarray, rate: float, smoother_factory) -> tuple[np.ndarray, np.ndarray]:
    """One track's rows through ClassifySchedule + a smoother, as the pipeline runs them: (smoothed (T, 7),
    classified (T,) bool)."""
    from rtfer.pipeline import ClassifySchedule

    schedule = ClassifySchedule(rate)
    smoother = smoother_factory()
    ids = np.zeros(1, np.int64)
    out = np.zeros_like(raw, dtype=np.float64)
    classified = np.zeros(len(raw), bool)
    for k, (t, row) in enumerate(zip(times, raw)):
        due = schedule.due(ids, float(t), smoother)
        if due[0]:
            out[k] = smoother.update(ids, row[None], float(t))[0]
            schedule.remember(ids, row[None])
            classified[k] = True
        else:
            out[k] = smoother.hold(ids, float(t))[0]
    return out, classified


def step_lag(rate: float, smoother_factory, *, fps: float = 30.0, confidence: float = 0.8) -> int | None:
    """Worst lag (frames) over the phase of the step relative to the classification slots; None if never follows."""
    worst = 0
    phases = max(1, int(round(fps / rate))) if rate > 0 else 1
    for phase in range(phases):
        probs, times = step_sequence("neutral", "happiness", fps=fps, n_before=30 + phase, n_after=60,
                                     confidence=confidence)
        out, _ = replay(times, probs, rate, smoother_factory)
        hit = np.flatnonzero(out[30 + phase:].argmax(1) == CLASSES.index("happiness"))
        if len(hit) == 0:
            return None
        worst = max(worst, int(hit[0]))
    return worst


def evaluate(clips: list[ClipRows], rate: float, smoother_factory, reference: dict | None = None) -> tuple[dict, dict]:
    """Figures for one rate; returns (row, smoothed per (clip, track)) so the every-frame run can be the reference."""
    smoothed: dict = {}
    classified = agree = total = 0
    steady, room, conf, correct, dominant_right, labelled = [], [], [], [], 0, 0
    for c in clips:
        label_rows = []
        for tid, rows in c.tracks().items():
            out, cl = replay(c.time_s[rows], c.raw[rows], rate, smoother_factory)
            smoothed[(c.clip, tid)] = out
            classified += int(cl.sum())
            total += len(rows)
            if reference is not None:
                agree += int(np.sum(out.argmax(1) == reference[(c.clip, tid)].argmax(1)))
            if c.label is None:
                if c.time_s[rows][-1] - c.time_s[rows][0] >= 1.0:
                    room.append(label_switches_per_second(out, c.time_s[rows]))
            else:
                label_rows.append(out)
                steady.append(label_switches_per_second(out, c.time_s[rows]))
        if c.label is not None and label_rows:
            out = np.vstack(label_rows)
            labelled += 1
            hit = out.argmax(1) == CLASSES.index(c.label)
            votes = np.bincount(out.argmax(1), minlength=len(CLASSES))
            dominant_right += int(votes.argmax() == CLASSES.index(c.label))
            conf += out.max(1).tolist()
            correct += hit.tolist()
    conf_a, correct_a = np.asarray(conf), np.asarray(correct, np.float64)
    row = {"rate": "all" if rate == 0 else f"{rate:g}/s", "classified": classified / max(total, 1),
           "agree": agree / max(total, 1) if reference is not None else 1.0,
           "dominant": f"{dominant_right}/{labelled}", "right": float(correct_a.mean()) if len(correct_a) else None,
           "steady_sw": max(steady) if steady else None, "room_sw": float(np.mean(room)) if room else None,
           "lag8": step_lag(rate, smoother_factory, confidence=0.8),
           "lag5": step_lag(rate, smoother_factory, confidence=0.5),
           "conf": float(conf_a.mean()) if len(conf_a) else None,
           "acc": float(correct_a.mean()) if len(correct_a) else None,
           "ece": expected_calibration_error(conf_a, correct_a)}
    return row, smoothed


def main(argv: list[str] | None = None) -> int:
    from rtfer.smoothing import CONFIDENCE_TEMPERATURE, make_smoother

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--smoothing", default="hmm")
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=CONFIDENCE_TEMPERATURE,
                    help=f"confidence temperature (default {CONFIDENCE_TEMPERATURE})")
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES), help="comma-separated; 0 = all")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from smoothing_stability import format_table

    clips = collect(a.bundle, a.videos, a.cache)

    def factory():
        return make_smoother(a.smoothing, a.strength, confidence_temperature=a.temperature)

    rates = [float(r) for r in a.rates.split(",")]
    reference = None
    rows = []
    for rate in sorted(rates, key=lambda r: (r != 0, -r)):
        row, smoothed = evaluate(clips, rate, factory, reference)
        if rate == 0:
            reference = smoothed
        rows.append(row)
    print(f"# {a.smoothing}@{a.strength:g}, confidence temperature {a.temperature:g}, {len(clips)} clips")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
