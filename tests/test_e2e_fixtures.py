"""End to end with the shipped default bundle on the real fixture videos (../shared/fixtures/videos).

Each labelled clip shows one face with one labelled emotion (labels are per clip, from the source's file names).
The dominant smoothed emotion over the clip is checked against the label. Where the shipped bundle is known to get a
clip wrong, the case is a strict xfail that records the measured outcome: if the model improves, the XPASS fails the
suite and the expectation must be updated.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from rtfer.labels import CLASSES
from rtfer.pipeline import AnalyzeOptions, Pipeline

pytestmark = pytest.mark.shared

LABELLED = ("anger", "disgust", "fear", "happiness")
#: Clips the shipped (CPU-trained) default bundle gets wrong, with what it predicts instead (measured).
#: Measured with default 0.7.0 (val 86.6% / mean-class 73.7%; `python benchmarks/fixture_emotions.py`): anger and
#: happiness are right on every frame; the subtle disgust clip reads as neutral on every frame, and the fear clip as
#: surprise or neutral: fear and disgust are the two rarest FER+ classes. Every earlier default (0.3.0, 0.4.0, 0.5.0)
#: and a class-balanced stacker (mean-class 75-82%) read these two clips the same way.
KNOWN_MISSES: dict[str, str] = {"disgust": "neutral", "fear": "surprise or neutral"}


@pytest.fixture(scope="module")
def default_pipeline():
    from rtfer.errors import BundleError

    try:
        return Pipeline(AnalyzeOptions(bundle="default", backend="onnxruntime", device="cpu"))
    except BundleError as exc:
        pytest.skip(f"no default bundle: {exc}")


def _dominant(pipeline, path, max_frames=None):
    votes: Counter = Counter()
    mean = np.zeros(len(CLASSES))
    n = 0
    for r in itertools.islice(pipeline.run(str(path)), max_frames):
        if len(r.faces):
            top = int(np.argmax(r.faces.scores))
            p = r.smoothed.probs[top]
            votes[CLASSES[int(p.argmax())]] += 1
            mean += p
            n += 1
    return votes, mean / max(n, 1), n


@pytest.mark.parametrize("label", [
    pytest.param(lab, marks=pytest.mark.xfail(strict=True, reason=f"the default bundle predicts {KNOWN_MISSES[lab]}"))
    if lab in KNOWN_MISSES else lab for lab in LABELLED])
def test_dominant_emotion_of_labelled_clip(default_pipeline, fixture_videos, label):
    votes, mean, n = _dominant(default_pipeline, fixture_videos / f"{label}_diverhansun_01.mp4")
    assert n > 100, f"face found in only {n} frames"
    dominant, _ = votes.most_common(1)[0]
    assert dominant == label, f"dominant {dominant} ({dict(votes)}), mean probs {np.round(mean, 3).tolist()}"


def test_classroom_faces_keep_their_ids(default_pipeline, fixture_videos):
    ids: Counter = Counter()
    frames = 0
    for r in itertools.islice(default_pipeline.run(str(fixture_videos /
                                                        "unlabeled_george210843_classroom_6faces.mp4")), 150):
        frames += 1
        ids.update(r.faces.track_ids.tolist())
    steady = [tid for tid, count in ids.items() if count >= 0.8 * frames]
    assert len(steady) >= 4, ids  # most of the ~6 faces are tracked under one ID for (almost) the whole clip
    assert len(ids) <= 16, ids
