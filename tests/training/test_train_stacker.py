"""Ensemble fitting on synthetic member probabilities; the fitted combiners are what rtfer.ensemble applies."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rtfer.ensemble import make_ensemble
from rtfer.training.stacker import (cross_validated, fit_ensemble, fit_ensemble_from_runs, fit_logistic,
                                    fit_soft_vote, weight_grid)


def members(n=700, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 7
    out = []
    for noise, bias in ((1.0, 0), (1.2, 3)):
        z = rng.normal(size=(n, 7)) * noise
        z[np.arange(n), y] += 1.6
        z[:, bias] += 0.4  # member-specific bias that stacking can undo
        e = np.exp(z)
        out.append(e / e.sum(1, keepdims=True))
    return out, y


def test_weight_grid_is_on_the_simplex():
    g = weight_grid(2, 0.25)
    assert g.tolist() == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    assert np.allclose(weight_grid(3, 0.1).sum(1), 1) and len(weight_grid(3, 0.1)) == 66


def test_logistic_stacker_equals_sklearn_predict_proba():
    from sklearn.linear_model import LogisticRegression

    probs, y = members()
    st = fit_logistic(probs, y)
    x = np.concatenate(probs, 1)
    ref = LogisticRegression(max_iter=5000, random_state=0).fit(x, y).predict_proba(x)
    assert st.coef.shape == (7, 14)
    assert np.allclose(st(probs), ref, atol=1e-5)
    # and through bundle.json's dict, as the runtime builds it
    rt = make_ensemble(json.loads(json.dumps(st.to_dict())), 2)
    assert np.allclose(rt(probs), ref, atol=1e-5)


def test_soft_vote_prefers_the_better_member():
    probs, y = members()
    bad = np.random.default_rng(5).dirichlet(np.full(7, 0.3), len(y))  # confident and uninformative
    sv = fit_soft_vote([probs[0], bad], y, metric="accuracy")
    assert sv.weights[0] > sv.weights[1]


def test_fit_ensemble_ablation_and_choice():
    probs, y = members()
    fit = fit_ensemble(probs, y, ["a", "b"], folds=4)
    methods = [r["method"] for r in fit.ablation]
    assert methods == ["member:a", "member:b", "soft_vote_equal", "soft_vote", "logistic", "logistic_balanced"]
    fitted = {r["method"]: r for r in fit.ablation if r["fitted"]}
    # chosen by overall accuracy among soft vote and logistic; the class-balanced stacker is never the default
    auto = ("soft_vote", "logistic")
    assert fit.chosen == max(auto, key=lambda k: (fitted[k]["accuracy"], fitted[k]["mean_class_accuracy"]))
    assert fit.metrics["ensemble"]["accuracy"] == fitted[fit.chosen]["accuracy"]
    assert fit.metrics["ensemble"]["ece_tempered"] <= fit.metrics["ensemble"]["ece"] + 0.02
    assert fit.temperature == fit.metrics["ensemble"]["temperature"] > 0
    ens = make_ensemble(fit.ensemble, 2, fit.temperature)
    assert ens(probs).shape == (len(y), 7)
    # stacking undoes the members' biases, so it beats every single member
    best_member = max(r["mean_class_accuracy"] for r in fit.ablation if r["method"].startswith("member"))
    assert fitted["logistic"]["mean_class_accuracy"] > best_member
    forced = fit_ensemble(probs, y, ["a", "b"], choose="soft_vote", folds=3)
    assert forced.ensemble["method"] == "soft_vote"
    balanced = fit_ensemble(probs, y, ["a", "b"], choose="logistic_balanced", folds=3)
    assert balanced.chosen == "logistic_balanced" and balanced.ensemble["method"] == "logistic"


def test_auto_never_picks_the_balanced_stacker_even_when_it_wins_mean_class():
    # a rare class the members under-predict: class weights buy mean-class accuracy at the cost of overall accuracy
    rng = np.random.default_rng(3)
    y = np.where(rng.random(700) < 0.08, 1, rng.integers(2, 7, 700))
    probs = []
    for s in (1.0, 1.3):
        logits = rng.normal(0, 1, (700, 7))
        logits[np.arange(700), y] += 1.6 * s
        logits[:, 1] -= 1.5
        probs.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    fit = fit_ensemble(probs, y, ["a", "b"], folds=4)
    fitted = {r["method"]: r for r in fit.ablation if r["fitted"]}
    assert fitted["logistic_balanced"]["mean_class_accuracy"] > fitted["logistic"]["mean_class_accuracy"]
    assert fit.chosen != "logistic_balanced"
    # ... but the bundle carries it as the "balanced" alternative, with its own temperature and figures
    alt = fit.alternatives["balanced"]
    assert alt["fitted_as"] == "logistic_balanced" and alt["method"] == "logistic" and alt["temperature"] > 0
    assert alt["metrics"]["mean_class_accuracy"] == fitted["logistic_balanced"]["mean_class_accuracy"]
    assert alt["metrics"]["recall"]["fear"] > fit.metrics["ensemble"]["recall"]["fear"]
    balanced = make_ensemble(alt, 2, alt["temperature"])(probs)
    default = make_ensemble(fit.ensemble, 2, fit.temperature)(probs)
    assert (balanced.argmax(1) == 1).sum() > (default.argmax(1) == 1).sum()  # it finds the rare class more often
    # chosen outright, it is the bundle's own combiner and no alternative
    assert fit_ensemble(probs, y, ["a", "b"], choose="logistic_balanced", folds=3).alternatives == {}


def test_cross_validated_figures_are_out_of_fold():
    rng = np.random.default_rng(0)
    y = np.arange(280) % 7
    noise = [rng.dirichlet(np.ones(7), 280) for _ in range(2)]  # members carry no information
    oof = cross_validated("logistic", noise, y, folds=4)
    in_sample = fit_logistic(noise, y)(noise)
    acc_oof = (oof.argmax(1) == y).mean()
    acc_in = (in_sample.argmax(1) == y).mean()
    assert acc_oof < 0.25 and acc_in > acc_oof  # fitting and scoring on the same images would flatter the stacker


def test_fit_from_run_folders(tmp_path):
    probs, y = members(210)
    runs = []
    for name, p, t in (("ddamfn", probs[0], 1.5), ("convnext", probs[1], 1.0)):
        d = tmp_path / name
        d.mkdir()
        np.savez(d / "val_logits.npz", logits=np.log(p) * t, labels=y)
        (d / "val.json").write_text(json.dumps({"temperature": t}))
        runs.append(d)
    fit = fit_ensemble_from_runs(runs, tmp_path / "ens", folds=3)
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert saved["member_names"] == ["ddamfn", "convnext"]
    assert saved["member_temperatures"] == pytest.approx([1.5, 1.0])
    assert "| logistic |" in (tmp_path / "ens" / "ablation.md").read_text()
    assert fit.chosen in ("soft_vote", "logistic")
    assert "ECE" in (tmp_path / "ens" / "ablation.md").read_text()


def test_posterior_shift_recovers_a_prior_shift():
    from rtfer.training.stacker import fit_posterior_shift

    rng = np.random.default_rng(3)
    prior = np.array([0.12, 0.02, 0.01, 0.3, 0.12, 0.08, 0.35])
    labels = rng.choice(7, 20000, p=prior)
    logits = rng.normal(0, 1, (20000, 7))
    logits[np.arange(20000), labels] += 1.5
    # calibrated posterior under the prior, then a combiner that divides the prior out ("balanced")
    post = np.exp(logits) * prior
    post /= post.sum(1, keepdims=True)
    balanced = post / prior
    balanced /= balanced.sum(1, keepdims=True)
    shift = fit_posterior_shift(balanced, labels)
    want = np.log(prior) - np.log(prior).mean()
    np.testing.assert_allclose(shift, want, atol=0.2)  # sampling noise on the rarest class (200 of 20,000)
    # a class absent from the labels keeps no shift of its own
    few = labels != 2
    assert fit_posterior_shift(balanced[few], labels[few])[2] == pytest.approx(0.0, abs=1e-12)


def test_class_bias_is_added_to_either_combiners_logits_and_round_trips():
    from rtfer.ensemble import LogisticStacker, SoftVote, make_ensemble

    rng = np.random.default_rng(3)
    members = [rng.dirichlet(np.ones(7), size=4) for _ in range(2)]
    bias = rng.normal(0, 0.5, 7)
    sv, plain = SoftVote([0.4, 0.6], 0.8, bias), SoftVote([0.4, 0.6], 0.8)
    want = np.log(plain(members).astype(np.float64)) * 0.8 + bias
    want = np.exp(want / 0.8 - (want / 0.8).max(1, keepdims=True))
    assert np.allclose(sv(members), want / want.sum(1, keepdims=True), atol=1e-6)
    coef, icpt = rng.normal(0, 1, (7, 14)), rng.normal(0, 1, 7)
    lg = LogisticStacker(coef, icpt, 1.3, bias)
    assert np.allclose(lg(members), LogisticStacker(coef, icpt + bias, 1.3)(members), atol=1e-6)
    for ens in (sv, lg):
        again = make_ensemble(ens.to_dict(), 2, ens.temperature)
        assert np.allclose(again(members), ens(members)) and np.allclose(again.class_bias, bias)
    assert "class_bias" not in plain.to_dict()
    with pytest.raises(ValueError, match="class_bias must be 7 finite numbers"):
        SoftVote([1.0], 1.0, [0.0, float("nan"), 0, 0, 0, 0, 0])
