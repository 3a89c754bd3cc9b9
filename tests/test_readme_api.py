"""The README's Python API snippet runs as printed and gives the CLI's raw columns (within 0.01)."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python code block"
    return match.group(1)


@pytest.fixture()
def snippet_dir(tmp_path, monkeypatch, group_photo_path, group_video):
    shutil.copy(group_photo_path, tmp_path / "group.jpg")
    shutil.copy(group_video, tmp_path / "video.mp4")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_snippet_matches_cli_raw_columns(snippet_dir, capsys):
    code = readme_api_snippet()
    assert "bundle.align(" in code and "bundle.predict(" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # the snippet exactly as printed
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 24, "the snippet's analyze loop prints one line per frame of the 24-frame clip"
    probs = namespace["probs"]

    rc, _, err = run_cli(["analyze", "group.jpg", "--raw", "-o", "cli.csv", "--no-progress", "-q"], capsys)
    assert rc == 0, err
    rows = [r for r in csv.DictReader(open(snippet_dir / "cli.csv", newline="")) if r["face_id"]]
    import rtfer

    cli = np.array([[float(r[f"raw_{c}"]) for c in rtfer.CLASSES] for r in rows], np.float32)
    assert probs.shape == cli.shape and len(cli) >= 4, (probs.shape, cli.shape)
    assert np.abs(probs - cli).max() < 0.01


def test_predict_warns_once_for_resized_crops(group_photo, caplog):
    import rtfer
    from rtfer.detection import create_detector
    from rtfer.detection.align import align_faces

    bundle = rtfer.load_bundle("default", backend="onnxruntime", device="cpu")
    faces = create_detector(bundle.spec.detector).detect(group_photo)
    exact = bundle.predict(bundle.align(group_photo, faces))
    assert set(bundle.align(group_photo, faces.landmarks)) == set(bundle.input_sizes)
    native = align_faces(group_photo, faces.landmarks, bundle.input_sizes[0], bundle.alignment_template)[0]
    assert np.array_equal(bundle.predict(native), exact)  # one array at the member size is the runtime's crop
    assert "resized" not in caplog.text
    crops112 = align_faces(group_photo, faces.landmarks, 112, bundle.alignment_template)[0]
    bundle.predict(crops112)
    bundle.predict(crops112)
    assert caplog.text.count("112 px crops are resized") == 1
