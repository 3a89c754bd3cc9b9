"""Time to the first result: what `rtfer` imports before it works, and the CenterFace graph cache."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnxruntime", "torch", "scipy", "cv2", "av", "matplotlib", "tensorrt")


def test_cli_parser_imports_no_heavy_module():
    code = ("import sys, rtfer.cli; rtfer.cli.build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_centerface_graph_is_cached_on_disk(tmp_path, monkeypatch):
    from rtfer.detection import centerface

    try:
        source = str(centerface.default_model_path())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"CenterFace model unavailable: {exc}")
    monkeypatch.setenv("RTFER_MODEL_CACHE", str(tmp_path))
    centerface.cached_dynamic_model.cache_clear()
    first = centerface.cached_dynamic_model(source)
    cached = list(tmp_path.glob("centerface-dynamic-v*.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == first

    def boom(path):
        raise AssertionError("the cached graph should be read back, not rebuilt")

    monkeypatch.setattr(centerface, "dynamic_model_bytes", boom)
    centerface.cached_dynamic_model.cache_clear()
    assert centerface.cached_dynamic_model(source) == first
    centerface.cached_dynamic_model.cache_clear()


def test_centerface_cache_folder_unwritable_still_loads(tmp_path, monkeypatch):
    from rtfer.detection import centerface

    try:
        source = str(centerface.default_model_path())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"CenterFace model unavailable: {exc}")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RTFER_MODEL_CACHE", str(blocker / "cache"))
    centerface.cached_dynamic_model.cache_clear()
    assert centerface.cached_dynamic_model(source) == centerface.dynamic_model_bytes(source)
    centerface.cached_dynamic_model.cache_clear()
