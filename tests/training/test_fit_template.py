import numpy as np

from rtfer.training.fit_template import symmetrize


def test_symmetrize_levels_and_centres_a_tilted_template():
    tilted = np.array([[0.31, 0.41], [0.69, 0.39], [0.51, 0.60], [0.35, 0.76], [0.65, 0.75]])
    s = symmetrize(tilted)
    assert np.isclose(s[0, 1], s[1, 1]) and np.isclose(s[3, 1], s[4, 1])  # eyes and mouth corners level
    assert np.isclose(s[0, 0] + s[1, 0], 1.0) and np.isclose(s[2, 0], 0.5)  # centred
    np.testing.assert_allclose(symmetrize(s), s)  # idempotent
    np.testing.assert_allclose(s[:, 1].mean(), tilted[:, 1].mean())


def test_shipped_default_bundle_uses_the_fitted_template():
    import json
    from pathlib import Path

    import rtfer.bundle

    root = Path(__file__).resolve().parents[2]
    fitted = json.loads((root / "training" / "templates" / "fer2013_centerface.json").read_text())["template"]
    spec = rtfer.bundle.BundleSpec.read(rtfer.bundle.resolve_bundle_path("default"))
    np.testing.assert_allclose(spec.alignment_template, fitted, atol=1e-6)
