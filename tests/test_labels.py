import numpy as np
import pytest

from rtfer import labels


def test_canonical_order_is_rafdb():
    assert labels.CLASSES == ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    assert [labels.raf_label_to_index(k) for k in range(1, 8)] == list(range(7))
    with pytest.raises(ValueError):
        labels.raf_label_to_index(0)


def test_scales_cover_every_class_once():
    for scale in ("sentiment3", "sentiment5", "seed5"):
        m = labels.scale_matrix(scale)
        assert m.sum(axis=1).tolist() == [1.0] * 7, scale


def test_scale_sums_and_argmax():
    p = np.array([[0.1, 0.05, 0.05, 0.5, 0.1, 0.1, 0.1]], np.float32)
    p5 = labels.to_scale(p, "sentiment5")
    assert np.allclose(p5, [[0.15, 0.15, 0.1, 0.1, 0.5]])
    assert labels.scale_labels(p, "sentiment5") == ["very_positive"]
    assert labels.scale_labels(p, "sentiment3") == ["positive"]
    assert np.isclose(labels.valence(p)[0], 0.6 - 0.3)
    # the level is the argmax of summed probabilities, not the level of the top class
    q = np.array([[0.0, 0.2, 0.0, 0.3, 0.25, 0.25, 0.0]], np.float32)
    assert labels.CLASSES[int(q.argmax())] == "happiness"
    assert labels.scale_labels(q, "sentiment3") == ["negative"]


def test_reorder_between_edge_orders():
    ref = np.arange(7)[None, :].astype(float)  # values equal to the DDAMFN reference index
    ours = labels.reorder(ref, labels.DDAMFN_REFERENCE_ORDER)
    # surprise is index 3 in the reference order, neutral index 0
    assert ours[0, labels.CLASS_INDEX["surprise"]] == 3
    assert ours[0, labels.CLASS_INDEX["neutral"]] == 0
    folder_labels = np.array([0, 3, 6])  # angry, happy, surprise in FER2013 folder order
    assert labels.remap_labels(folder_labels, labels.FER2013_FOLDERS).tolist() == [5, 3, 0]
    with pytest.raises(ValueError):
        labels.permutation(("neutral", "happiness"))


def test_valence_through_a_posterior_shift():
    from rtfer.labels import valence
    from rtfer.types import EmotionScores

    p = np.array([[0.05, 0.1, 0.1, 0.05, 0.2, 0.1, 0.4]])  # a neutral-ish row leaning negative
    assert valence(p, np.zeros(7)) == pytest.approx(valence(p), abs=1e-7)
    shift = np.log([1, 0.2, 0.1, 2, 0.5, 0.5, 3.0])
    q = p * np.exp(shift)
    q /= q.sum()
    assert valence(p, shift)[0] == pytest.approx(q[0, [0, 3]].sum() - q[0, [1, 2, 4, 5]].sum(), abs=1e-6)
    assert abs(valence(p, shift)[0]) < abs(valence(p)[0])
    assert valence(p, shift + 5.0)[0] == pytest.approx(valence(p, shift)[0], abs=1e-7)  # offsets are relative
    # EmotionScores computes valence from its rows unless given one
    s = EmotionScores(p)
    assert s.valence.shape == (1,) and s.valence[0] == pytest.approx(valence(p)[0], abs=1e-6)
    assert EmotionScores(p, shift).valence[0] == pytest.approx(valence(p, shift)[0], abs=1e-6)
    assert EmotionScores.empty().valence.shape == (0,)
    with pytest.raises(ValueError, match="valence"):
        EmotionScores(p, np.array([0.1, 0.2]))
