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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for torch and onnxruntime: on a small shared CPU, thread spinning makes tiny models many
    times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("RTFER_ORT_THREADS", "1")
    yield
    mp.undo()
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_bundle(request) -> Path:
    """A two-member bundle with random weights (ddamfn_tiny + convnextv2_test), written by the real exporter.

    Kept in pytest's cache folder keyed by the sources that shape it, and rebuilt when any of them changes.
    """
    import hashlib

    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError

    sources = sorted((REPO / "rtfer" / "models").glob("*.py")) + [REPO / "training" / "export.py",
                                                                  REPO / "rtfer" / "bundle.py"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources if p.is_file())).hexdigest()[:16]
    folder = Path(request.config.cache.mkdir("rtfer_tiny_bundle")) / key
    try:
        BundleSpec.read(folder).verify()
        return folder
    except BundleError:
        pass
    torch = pytest.importorskip("torch")
    from rtfer.models import create_model
    from rtfer.training.export import write_bundle

    torch.manual_seed(0)
    write_bundle(folder, [{"model": create_model("ddamfn_tiny").eval(), "name": "ddamfn"},
                          {"model": create_model("convnextv2_test").eval(), "name": "convnext"}],
                 {"method": "soft_vote", "weights": [0.5, 0.5]}, name="tiny-random", version="0", interim=True)
    return folder


@pytest.fixture(scope="session")
def group_video(tmp_path_factory, group_photo) -> Path:
    """A 24-frame, 12 fps video panning across the six-face group photo."""
    from media_helpers import write_test_video

    from media_helpers import pan_frames

    path = tmp_path_factory.mktemp("video") / "group.mp4"
    write_test_video(path, pan_frames(group_photo, 24, out_width=480), fps=12)
    return path
