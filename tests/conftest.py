"""Shared fixtures: paths to ../shared (optional) and real faces shipped inside installed packages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTFER_SHARED", REPO.parent / "shared"))
FIXTURE_VIDEOS = SHARED / "fixtures" / "videos"
FER2013 = SHARED / "data" / "fer2013"


def _skip_without(path: Path, what: str):
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (../shared is absent in a fresh clone)")
    return path


@pytest.fixture(scope="session")
def fixture_videos() -> Path:
    return _skip_without(FIXTURE_VIDEOS, "fixture videos")


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    return _skip_without(FER2013, "FER2013 data")


@pytest.fixture(scope="session")
def group_photo_path() -> Path:
    """insightface's six-face group photo (t1.jpg), shipped inside its wheel."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed (it ships the sample group photo)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    if not path.is_file():
        pytest.skip(f"sample photo missing at {path}")
    return path


@pytest.fixture(scope="session")
def group_photo(group_photo_path):
    import cv2

    return cv2.imread(str(group_photo_path))
