"""Metrics objects against hand-computed values; temperature fitting; the report files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rtfer.labels import CLASSES
from rtfer.training.evaluate import (CalibrationError, ClassificationMetrics, ScaleAccuracy, evaluate_logits,
                                     fit_temperature, nll, write_report)


def onehot(pred, k=7):
    return np.eye(k)[np.asarray(pred)]


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 3, 3, 6])
    pred = np.array([0, 0, 3, 3, 6, 6])
    m = ClassificationMetrics()
    m.update(onehot(pred[:3]), labels[:3]).update(onehot(pred[3:]), labels[3:])
    r = m.compute()
    assert r.count == 6 and r.accuracy == pytest.approx(4 / 6)
    # recall: class0 2/3, class3 1/2, class6 1/1 -> mean over present classes
    assert r.mean_class_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert r.precision[3] == pytest.approx(1 / 2) and r.precision[6] == pytest.approx(1 / 2)
    assert r.f1[0] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert r.confusion[0][3] == 1 and r.confusion[3][6] == 1 and r.support[0] == 3
    m.reset()
    assert m.compute().count == 0


def test_scale_accuracy_sums_probabilities():
    # true fear (negative); probs split over sadness/anger: no single negative class wins but the negative level does
    p = np.zeros((1, 7))
    p[0, CLASSES.index("happiness")] = 0.4
    p[0, CLASSES.index("sadness")] = 0.3
    p[0, CLASSES.index("anger")] = 0.3
    r3 = ScaleAccuracy("sentiment3").update(p, np.array([CLASSES.index("fear")])).compute()
    assert r3.accuracy == 1.0
    r5 = ScaleAccuracy("sentiment5").update(p, np.array([CLASSES.index("fear")])).compute()
    assert r5.accuracy == 0.0  # 5 levels: happiness (very_positive, 0.4) beats negative (0.3) and very_negative (0.3)
    seed = ScaleAccuracy("seed5").update(onehot([1]), np.array([0])).compute()
    assert seed.accuracy == 1.0  # surprise and fear share a group


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1, 0, 0, 0, 0, 0], [0.6, 0.4, 0, 0, 0, 0, 0]])
    r = CalibrationError(bins=10).update(probs, np.array([0, 1])).compute()
    # bin 9: conf .9, acc 1 -> |.1|; bin 6: conf .6, acc 0 -> .6; weighted by 1/2 each
    assert r.ece == pytest.approx((0.1 + 0.6) / 2)


def test_temperature_fit_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 7, n)
    true_logits = rng.normal(size=(n, 7))
    true_logits[np.arange(n), labels] += 1.0
    # sample labels from softmax(true_logits) so that T=1 is calibrated for true_logits
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    sampled = np.array([rng.choice(7, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, sampled)
    assert t == pytest.approx(3.0, rel=0.15)
    assert nll(true_logits * 3.0, sampled, t) < nll(true_logits * 3.0, sampled)


def test_report_files(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.arange(70) % 7
    logits = rng.normal(size=(70, 7)) * 3
    logits[np.arange(70), labels] += 3
    report = evaluate_logits(logits, labels, split="val")
    paths = write_report(report, tmp_path, "val", title="m")
    data = json.loads(paths["json"].read_text())
    assert data["classification"]["accuracy"] == pytest.approx(report.classification.accuracy)
    assert set(data["scales"]) == set(data["scales_calibrated"]) == {"sentiment3", "sentiment5", "seed5"}
    assert report.ece_calibrated <= report.ece + 1e-9 or report.temperature == pytest.approx(1, abs=0.2)
    assert "mean-class accuracy" in paths["md"].read_text() and paths["png"].stat().st_size > 1000
