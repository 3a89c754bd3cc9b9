"""The app's "Load adapted model…" entry: a bundle folder becomes the model (stored, used by the next run)."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("PyQt6")

from rtfer.ui.main_window import MainWindow  # noqa: E402


@pytest.fixture
def window(qtbot, qsettings, fake_factory):
    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    qtbot.addWidget(win)
    yield win
    win.controller.stop()


def test_load_adapted_model_from_the_button(window, qsettings, tmp_path, monkeypatch):
    import json

    from PyQt6.QtWidgets import QPushButton

    from rtfer.bundle import builtin_bundles_dir

    folder = tmp_path / "my-adapted"
    shutil.copytree(builtin_bundles_dir() / "default", folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["adaptation"] = {"base": {"name": "default", "version": meta["version"]}}
    (folder / "bundle.json").write_text(json.dumps(meta))
    monkeypatch.setattr(window, "ask_open_path", lambda *a, **k: str(folder))
    button = next(b for b in window.findChildren(QPushButton) if b.text() == "Load adapted model…")
    button.click()
    assert window.settings.bundle == str(folder)
    assert window.effective_settings().to_options().bundle == str(folder)
    assert "adapted from default" in window.statusBar().currentMessage()
    assert MainWindow(qsettings, cameras=[]).settings.bundle == str(folder)  # remembered


def test_a_folder_that_is_not_a_bundle_is_a_message(window, tmp_path):
    assert not window.load_model(str(tmp_path))
    assert window.settings.bundle == "default"
    assert "not a model bundle" in window.last_error
