"""Label stability raw vs smoothed, per face, from CSV timelines written by ``rtfer analyze --raw``.

    python benchmarks/smoothing_stability.py timeline.csv [more.csv ...] [--resmooth] [--fps 30]
    python benchmarks/smoothing_stability.py --fixtures [--bundle default]

``--fixtures`` needs no CSV: it replays the fixture clips' cached per-frame classifications
(``benchmarks/fixture_tracks.py``) through the default classification rate and smoothing, printing per face the
switches per second raw vs smoothed and, on the labelled clips, mean confidence, accuracy and ECE raw vs smoothed
(with and without the confidence temperature) plus the temperature fitted leave-one-clip-out (for comparison only:
no default is fitted on clips); how correlated neighbouring frames are; and issue 24's before/after table per clip
(switches per second, confidence vs accuracy, AUROC, calm faces' valence per combiner, image vs video), saying which
clips the defaults were tuned on.

For every (source, face_id) with at least two rows it prints frames, seconds, label switches per second and the
mean total variation of the raw (``raw_<class>``) and smoothed (``<class>``) probabilities. ``--resmooth`` also
re-smooths the raw columns with every method/strength so they can be compared on the same faces. Finally it prints
the synthetic step-response lag (frames) of each method/strength.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtfer.labels import CLASSES
from rtfer.smoothing import METHODS, make_smoother
from rtfer.stability import label_switches_per_second, mean_total_variation, step_lag_frames

STRENGTHS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Timeline:
    """One face's rows in time order."""

    source: str
    face_id: str
    times: np.ndarray  # (T,)
    raw: np.ndarray  # (T, 7)
    smoothed: np.ndarray  # (T, 7)


def load_timelines(path: str | Path) -> list[Timeline]:
    """Group a ``--raw`` CSV's face rows by (source, face_id); rows with an empty face_id (no face) are skipped."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in ("source", "time_s", "face_id", *CLASSES, *(f"raw_{c}" for c in CLASSES))
                   if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (write it with `rtfer analyze --raw`)")
        groups: dict[tuple[str, str], list[tuple[float, list[float], list[float]]]] = defaultdict(list)
        for row in reader:
            if not row["face_id"]:
                continue
            groups[(row["source"], row["face_id"])].append((
                float(row["time_s"]),
                [float(row[f"raw_{c}"]) for c in CLASSES],
                [float(row[c]) for c in CLASSES],
            ))
    out = []
    for (source, face_id), rows in groups.items():
        rows.sort(key=lambda r: r[0])
        out.append(Timeline(source, face_id, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                            np.array([r[2] for r in rows])))
    return out


def resmooth(timeline: Timeline, method: str, strength: float) -> np.ndarray:
    """Apply a smoother to the raw columns of one face (as the pipeline would)."""
    smoother = make_smoother(method, strength)
    ids = np.zeros(1, dtype=np.int64)
    return np.vstack([smoother.update(ids, row[None], float(t)) for row, t in zip(timeline.raw, timeline.times)])


def stability_rows(timelines: list[Timeline], *, resmooth_all: bool = False) -> list[dict]:
    """One row per face (and per re-smoothing when asked) with the flicker metrics."""
    rows = []
    for tl in timelines:
        if len(tl.times) < 2:
            continue
        variants = [("raw", tl.raw), ("csv", tl.smoothed)]
        if resmooth_all:
            variants += [(f"{m}@{s:g}", resmooth(tl, m, s)) for m in METHODS if m != "none" for s in STRENGTHS]
        for name, probs in variants:
            rows.append({
                "source": tl.source, "face_id": tl.face_id, "variant": name, "frames": len(tl.times),
                "seconds": float(tl.times[-1] - tl.times[0]),
                "switches_per_s": label_switches_per_second(probs, tl.times),
                "mean_tv": mean_total_variation(probs),
                "agree_raw": float(np.mean(probs.argmax(1) == tl.raw.argmax(1))),
            })
    return rows


def step_lag_rows(fps: float = 30.0, confidence: float = 0.8) -> list[dict]:
    """Synthetic neutral -> happiness step lag (frames) for each method/strength."""
    rows = []
    for method in METHODS:
        for strength in ((0.0,) if method == "none" else STRENGTHS):
            lag = step_lag_frames(lambda: make_smoother(method, strength), fps=fps, confidence=confidence)
            rows.append({"method": method, "strength": strength, "fps": fps, "confidence": confidence,
                         "lag_frames": lag, "lag_s": None if lag is None else lag / fps})
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain fixed-width table (floats to 3 decimals, None or a missing cell as '-'); the columns of all rows, in
    order of first appearance (a row saying a combiner is unavailable has fewer)."""
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(c for r in rows for c in r))

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def fixture_rows(bundle: str = "default", *, smoothing: str = "hmm", strength: float = 0.5,
                 rate: float | None = None, temperature: float | None = None,
                 combiner: str = "default") -> tuple[list[dict], list[dict]]:
    """(per-face stability rows, calibration rows) on the fixture clips with the pipeline's defaults."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from classify_rate import expected_calibration_error, replay
    from fixture_tracks import collect

    from rtfer.pipeline import DEFAULT_CLASSIFY_RATE
    from rtfer.smoothing import CONFIDENCE_TEMPERATURE, calibrate

    rate = DEFAULT_CLASSIFY_RATE if rate is None else rate
    temperature = CONFIDENCE_TEMPERATURE if temperature is None else temperature
    clips = collect(bundle, combiner=combiner)
    stab, labelled = [], []
    for c in clips:
        for tid, rows in c.tracks().items():
            t = c.time_s[rows]
            if len(rows) < 2 or t[-1] - t[0] < 1.0:
                continue
            out, cl = replay(t, c.raw[rows], rate, lambda: make_smoother(smoothing, strength))  # uncalibrated
            stab.append({"clip": c.clip, "face": tid, "seconds": float(t[-1] - t[0]), "classified": float(cl.mean()),
                         "raw_sw": label_switches_per_second(c.raw[rows], t),
                         "smoothed_sw": label_switches_per_second(out, t),
                         "raw_tv": mean_total_variation(c.raw[rows]), "smoothed_tv": mean_total_variation(out)})
            if c.label is not None:
                labelled.append((c.raw[rows], out, CLASSES.index(c.label)))

    def cal(name: str, pairs: list[tuple[np.ndarray, int]], temp: float) -> dict:
        conf = np.concatenate([calibrate(p, temp).max(1) for p, _ in pairs])
        right = np.concatenate([(p.argmax(1) == y).astype(float) for p, y in pairs])
        return {"output": name, "temperature": temp, "frames": len(conf), "mean_conf": float(conf.mean()),
                "accuracy": float(right.mean()), "conf_minus_acc": float(conf.mean() - right.mean()),
                "ece": expected_calibration_error(conf, right)}

    raw = [(r, y) for r, _, y in labelled]
    smooth = [(o, y) for _, o, y in labelled]
    rows = [cal("raw", raw, 1.0), cal("smoothed", smooth, 1.0)]
    if temperature != 1.0:
        rows.append(cal("smoothed", smooth, temperature))
    if len(smooth) > 1:  # leave one clip out: fit T by NLL on the others, score the held-out clip at that T
        grid = np.arange(1.0, 8.01, 0.25)

        def nll(pairs, temp):
            return float(np.mean(np.concatenate([-np.log(calibrate(p, temp)[:, y] + 1e-9) for p, y in pairs])))

        held = []
        for i in range(len(smooth)):
            rest = smooth[:i] + smooth[i + 1:]
            best = float(min(grid, key=lambda temp: nll(rest, temp)))
            held.append((calibrate(smooth[i][0], best), smooth[i][1], best))
        row = cal("smoothed, T fitted leave-one-clip-out", [(p, y) for p, y, _ in held], 1.0)
        row["temperature"] = "/".join(f"{b:g}" for _, _, b in held)
        rows.append(row)
        fitted = float(min(grid, key=lambda temp: nll(smooth, temp)))
        rows.append(dict(cal("smoothed, T fitted on all clips (NLL)", smooth, fitted)))
    return stab, rows


#: Fixture clips the smoothing defaults were tuned on (issue 24: the hysteresis margin was chosen on these and the
#: synthetic steps); every other fixture clip is held out. The confidence scale saw no clip at all: the per-frame
#: probabilities are calibrated on the FER+ val crops (``benchmarks/val_calibration.py``).
TUNED_ON = ("anger_diverhansun_01", "happiness_diverhansun_01", "unlabeled_george210843_classroom_6faces")


def _auroc(score, positive) -> float:
    from val_calibration import auroc

    return auroc(np.asarray(score), np.asarray(positive, bool))


def correlated_evidence(bundle: str = "default", half_life_s: float = 0.2, fps: float = 30.0) -> dict:
    """Why smoothing must not count neighbouring frames as independent evidence, measured on the fixture clips
    without labels (tracks of >= 100 frames): how often a face's per-frame label equals its label k frames later,
    the autocorrelation of the top-class log-odds around the track's mean, and the effective number of independent
    observations that correlation leaves in an EMA window of ``half_life_s`` (``1 / sum_ij w_i w_j rho(|i - j|)``;
    independent frames would give ``1 / sum_i w_i^2``). The track's mean itself (what makes a face read right or
    wrong) is shared by every frame: for the label's correctness a window is one observation."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixture_tracks import collect

    lags = (1, 3, 10, 30, 90)
    agree: dict[int, list[bool]] = {k: [] for k in lags}
    series = []
    for c in collect(bundle):
        for rows in c.tracks().values():
            if len(rows) < 100:
                continue
            lab, fr = c.raw[rows].argmax(1), c.frame[rows]
            for k in lags:
                i = np.arange(len(rows) - k)
                ok = fr[i + k] - fr[i] == k
                agree[k] += (lab[i + k] == lab[i])[ok].tolist()
            p = np.clip(c.raw[rows], 1e-6, 1 - 1e-6)
            top = np.bincount(lab, minlength=len(CLASSES)).argmax()
            z = np.log(p[:, top]) - np.log1p(-p[:, top])
            series.append(z - z.mean())
    den = sum(float((x * x).sum()) for x in series)
    n = 120
    rho = np.array([1.0] + [sum(float((x[:-k] * x[k:]).sum()) for x in series if len(x) > k) / den
                            for k in range(1, n)])
    a = 1 - 0.5 ** (1 / (half_life_s * fps))
    w = a * (1 - a) ** np.arange(n)
    w /= w.sum()
    r = rho[np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])]
    return {"same_label_after": {k: float(np.mean(v)) for k, v in agree.items() if v},
            "autocorrelation": {k: float(rho[k]) for k in (1, 3, 10, 30, 90)},
            "n_eff_window": float(1 / (w @ r @ w)), "n_if_independent": float(1 / (w @ w))}


def before_after(bundle: str = "default", rate: float | None = None,
                 combiner: str = "default") -> tuple[list[dict], list[dict], list[dict]]:
    """Issue 24's table on the fixture clips: per clip switches per second, mean confidence and accuracy before
    (hmm 0.5, no hysteresis, temperature 3) and after (the current defaults); pooled confidence figures by split;
    valence of calm faces (raw label neutral on >= 90% of a track's rows) with ``combiner`` and its class-balanced
    counterpart where the bundle has one (``balanced`` for the default, ``flip_balanced`` for ``flip``). Returns (per-clip rows, pooled rows,
    valence rows)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from classify_rate import expected_calibration_error, replay
    from fixture_tracks import collect

    from rtfer.labels import valence
    from rtfer.pipeline import DEFAULT_CLASSIFY_RATE
    from rtfer.smoothing import HMMSmoother

    rate = DEFAULT_CLASSIFY_RATE if rate is None else rate
    configs = {"before": lambda: HMMSmoother(0.5, margin=0.0, confidence_temperature=3.0),
               "after": lambda: make_smoother("hmm", 0.5)}
    clips = collect(bundle, combiner=combiner)
    per_clip, pooled_in, val_rows = [], defaultdict(lambda: defaultdict(list)), []
    for c in clips:
        split = "tuned-on" if Path(c.clip).stem in TUNED_ON else "held-out"
        row: dict = {"clip": Path(c.clip).stem.replace("unlabeled_", "")[:30], "split": split}
        for name, factory in configs.items():
            sw, dur, conf, right = [], [], [], []
            for tid, rows in c.tracks().items():
                t = c.time_s[rows]
                out, _ = replay(t, c.raw[rows], rate, factory)
                if len(rows) >= 2 and t[-1] - t[0] >= 1.0:
                    sw.append(label_switches_per_second(out, t))
                    dur.append(t[-1] - t[0])
                if c.label is not None:
                    conf += out.max(1).tolist()
                    right += (out.argmax(1) == CLASSES.index(c.label)).tolist()
            row[f"sw_{name}"] = float(np.average(sw, weights=dur)) if sw else None
            row[f"swmax_{name}"] = max(sw) if sw else None
            row[f"conf_{name}"] = float(np.mean(conf)) if conf else None
            row[f"acc_{name}"] = float(np.mean(right)) if right else None
            if conf:
                for group in (split, "all labelled"):
                    pooled_in[(group, name)]["conf"] += conf
                    pooled_in[(group, name)]["right"] += right
        per_clip.append(row)
    pooled = []
    for (group, name), d in sorted(pooled_in.items()):
        conf, right = np.asarray(d["conf"]), np.asarray(d["right"], np.float64)
        pooled.append({"labelled clips": group, "smoothing": name, "frames": len(conf), "mean_conf": float(conf.mean()),
                       "accuracy": float(right.mean()), "gap": float(abs(conf.mean() - right.mean())),
                       "auroc": _auroc(conf, right), "ece": expected_calibration_error(conf, right)})
    # valence of calm faces: which faces are calm is decided on the chosen combiner's raw labels
    calm, strict = {}, set()
    neutral = CLASSES.index("neutral")
    for c in clips:
        for tid, rows in c.tracks().items():
            t = c.time_s[rows]
            if c.label is None and t[-1] - t[0] >= 1.0 and np.mean(c.raw[rows].argmax(1) == neutral) >= 0.9:
                calm.setdefault(c.clip, []).append(tid)
                if c.raw[rows, neutral].mean() >= 0.85:  # the model itself sure of neutral (the 0.94 face)
                    strict.add((c.clip, tid))
    from rtfer.run import bundle_combiners

    balanced = "balanced" if combiner == "default" else f"{combiner}_balanced"
    companion = [(balanced, False)] if balanced in bundle_combiners(bundle) else []  # tilted has none
    for cname, chosen in ((combiner, True), *companion):
        try:
            cl = clips if chosen else collect(bundle, combiner=cname)
        except Exception as exc:  # noqa: BLE001 - a bundle without that combiner: say so and go on
            log_row = {"combiner": cname, "clip": f"unavailable: {exc}"}
            val_rows.append(log_row)
            continue
        from rtfer.bundle import BundleSpec, resolve_bundle_path

        shift = BundleSpec.read(resolve_bundle_path(bundle)).posterior_shift(cname)  # valence as rtfer computes it
        for c in cl:
            if c.clip not in calm:
                continue
            tracks = c.tracks()
            for name, factory in configs.items():
                means, image_gap, sure = [], [], []
                for tid in calm[c.clip]:
                    rows = tracks.get(tid)
                    if rows is None:
                        continue
                    out, _ = replay(c.time_s[rows], c.raw[rows], rate, factory)
                    sh = shift if name == "after" else None  # before: valence straight from the combiner's output
                    means.append(float(valence(out, sh).mean()))
                    if (c.clip, tid) in strict:
                        sure.append(means[-1])
                    # an image of the same frame: rtfer classifies images without smoothing or temperature
                    image_gap.append(float(np.abs(valence(out, sh) - valence(c.raw[rows], sh)).mean()))
                val_rows.append({"combiner": cname, "clip": Path(c.clip).stem.replace("unlabeled_", "")[:30],
                                 "smoothing": name, "calm_faces": len(means), "valence_mean": float(np.mean(means)),
                                 "valence_min": min(means), "valence_max": max(means),
                                 "sure_faces": len(sure), "sure_min": min(sure) if sure else None,
                                 "sure_max": max(sure) if sure else None,
                                 "image_vs_video": float(np.mean(image_gap))})
    return per_clip, pooled, val_rows


def margin_sweep(bundle: str = "default", method: str = "ema", margins=(0.0, 0.25, 0.5, 0.75, 1.0),
                 rate: float | None = None) -> list[dict]:
    """How the hysteresis margin of ``method`` (strength 0.5) trades steadiness for lag: per margin, the label
    switches per second on the fixture clips (duration-weighted mean and worst face, tuned-on and held-out clips
    apart) and the worst step lag (frames at 30 fps, every phase of the classification schedule) on a strong (0.8)
    and a weak (0.5) synthetic step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from classify_rate import replay, step_lag
    from fixture_tracks import collect

    from rtfer.pipeline import DEFAULT_CLASSIFY_RATE

    rate = DEFAULT_CLASSIFY_RATE if rate is None else rate
    clips = collect(bundle)
    rows = []
    for margin in margins:
        def factory(m=margin):
            return make_smoother(method, 0.5, margin=m)

        row: dict = {"method": method, "margin": margin}
        for split in ("tuned-on", "held-out"):
            sw, dur = [], []
            for c in clips:
                if ("tuned-on" if Path(c.clip).stem in TUNED_ON else "held-out") != split:
                    continue
                for rows_ in c.tracks().values():
                    t = c.time_s[rows_]
                    if len(rows_) >= 2 and t[-1] - t[0] >= 1.0:
                        out, _ = replay(t, c.raw[rows_], rate, factory)
                        sw.append(label_switches_per_second(out, t))
                        dur.append(t[-1] - t[0])
            row[f"sw_{split}"] = float(np.average(sw, weights=dur)) if sw else None
            row[f"swmax_{split}"] = max(sw) if sw else None
        row["lag_strong"] = step_lag(rate, factory, confidence=0.8)
        row["lag_weak"] = step_lag(rate, factory, confidence=0.5)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", action="store_true",
                    help="replay the fixture clips (cached classifications) with the default rate and smoothing")
    ap.add_argument("--bundle", default="default", help="with --fixtures: the bundle whose cache to use")
    ap.add_argument("--combiner", default="default",
                    help="with --fixtures: the bundle's combiner for the steadiness, confidence and calm-valence tables "
                         "(e.g. flip; its class-balanced counterpart joins the valence table)")
    ap.add_argument("csv", nargs="*", type=Path, help="timelines written by `rtfer analyze --raw`")
    ap.add_argument("--resmooth", action="store_true", help="also re-smooth raw columns with every method/strength")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the synthetic step (default 30)")
    args = ap.parse_args(argv)
    if args.fixtures:
        stab, cal = fixture_rows(args.bundle, combiner=args.combiner)
        print("# fixture clips: label switches per second raw vs smoothed (default rate and smoothing)")
        print(format_table(stab))
        print()
        print("# labelled fixture frames: calibration raw vs smoothed")
        print(format_table(cal))
        print()
        ev = correlated_evidence(args.bundle)
        print("# neighbouring frames are not independent evidence (fixture tracks of >= 100 frames, no labels)")
        print("same label k frames later: " + ", ".join(f"k={k}: {v:.3f}" for k, v in ev["same_label_after"].items()))
        print("log-odds autocorrelation:  " + ", ".join(f"k={k}: {v:.2f}" for k, v in ev["autocorrelation"].items()))
        print(f"independent observations in the 0.2 s EMA window: {ev['n_eff_window']:.2f} "
              f"(independent frames would give {ev['n_if_independent']:.1f})")
        print()
        per_clip, pooled, val_rows = before_after(args.bundle, combiner=args.combiner)
        print("# before (hmm 0.5, no hysteresis, --confidence-temperature 3) vs after (defaults); split: whether the")
        print(f"# defaults were tuned on the clip ({', '.join(TUNED_ON)}); the confidence scale saw no clip")
        print(format_table(per_clip))
        print()
        print(format_table(pooled))
        print()
        print("# valence of calm faces (raw label neutral on >= 90% of rows; sure_: of those, mean raw neutral >= 0.85),")
        print("# per combiner; image_vs_video: mean |valence of the smoothed row - valence of the same frame classified")
        print("# as a still image (no smoothing)|")
        print(format_table(val_rows))
        print()
        print("# hysteresis margin (strength 0.5, default classification rate): switches per second on the fixture")
        print("# clips by split, worst step lag in frames at 30 fps (strong 0.8 and weak 0.5 steps; the target is <= 8)")
        print(format_table(margin_sweep(args.bundle, "ema") + margin_sweep(args.bundle, "hmm", (0.0, 1.0, 2.0, 3.0))))
        print()
    for path in args.csv:
        print(f"# {path}")
        print(format_table(stability_rows(load_timelines(path), resmooth_all=args.resmooth)))
        print()
    print(f"# synthetic step neutral -> happiness at {args.fps:g} fps (lag in frames until the label follows)")
    print(format_table(step_lag_rows(args.fps, 0.8) + step_lag_rows(args.fps, 0.5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
