"""The main window end to end with a fake pipeline (offscreen): results reach the widgets, errors show as
messages, recording/export write files, settings persist, and the headless screenshot mode works."""
from __future__ import annotations

import csv
import dataclasses
import time

import pytest

pytest.importorskip("pytestqt")

from rtfer.ui.main_window import MainWindow  # noqa: E402
from rtfer.ui.settings import AppSettings, SettingsDialog  # noqa: E402


@pytest.fixture
def window(qtbot, qsettings, fake_factory):
    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    win.settings.realtime = False
    qtbot.addWidget(win)
    win.show()
    yield win
    win.controller.stop()


def wait_idle(qtbot, win, timeout=10000):
    qtbot.waitUntil(lambda: win.controller.state == "idle" and not win.controller.running, timeout=timeout)
    qtbot.wait(50)  # let the queued signals land


def test_results_reach_the_widgets(qtbot, window, group_video, fake_factory):
    assert window.camera_combo.currentText() == "No camera found" and not window.camera_button.isEnabled()
    window.open_source(str(group_video))
    qtbot.waitUntil(lambda: window.results_shown > 0, timeout=10000)
    wait_idle(qtbot, window)
    assert window.view.has_image
    assert [b.track_id for b in window.panel.bars] == [1, 2]
    assert window.fps_label.text().endswith("fps")
    assert "det 5" in window.latency_label.text() and "inf 8" in window.latency_label.text()
    assert window.dropped_label.text() == "dropped 0"
    assert window.backend_label.text() == "fake on cpu · FakeDetector · fake 0"
    assert window.position_label.text() == "0:01 / 0:01"
    window.timeline.refresh()
    assert set(window.timeline._valence_curves) == {1, 2}
    assert window.error_banner.isHidden()
    assert "MainThread" not in fake_factory.made[0].threads  # inference never on the UI thread
    assert window.play_button.text() == "Play" and not window.stop_button.isEnabled()
    window.set_scale("sentiment5")
    assert window.panel.bars[0].names[0] == "very_negative" and window.controller.scale == "sentiment5"


def test_unreadable_file_shows_message(qtbot, window, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all")
    window.open_source(str(bad))
    wait_idle(qtbot, window)
    assert window.error_banner.isVisible()
    assert "notes.mp4" in window.error_label.text() and "Error" in window.statusBar().currentMessage()
    assert not window.view.has_image and "error" in window.view.text()


def test_bundle_failure_and_lost_camera_show_messages(qtbot, window, group_video, fake_factory):
    fake_factory.fail = "no bundle named or at 'missing'"
    window.open_source(str(group_video))
    wait_idle(qtbot, window)
    assert window.error_banner.isVisible() and "no bundle named" in window.error_label.text()

    fake_factory.fail = None
    fake_factory.kwargs = {"fail_after": 3}
    window.open_source(str(group_video))
    wait_idle(qtbot, window)
    assert window.error_banner.isVisible() and "stopped delivering frames" in window.error_label.text()
    assert window.view.has_image  # the last good frame stays on screen


def test_record_csv_and_export_summary(qtbot, window, group_video, fake_factory, tmp_path):
    fake_factory.kwargs = {"delay_s": 0.03}
    out_csv, out_png = tmp_path / "rec.csv", tmp_path / "sum.png"
    answers = {"rtfer_timeline.csv": str(out_csv), "rtfer_summary.png": str(out_png)}
    window.ask_save_path = lambda title, default_name, filters: answers[default_name]
    window.open_source(str(group_video))
    window.record_button.click()
    assert window.controller.recording and window.record_button.text().startswith("■")
    wait_idle(qtbot, window)
    assert not window.record_button.isChecked() and not window.controller.recording
    rows = list(csv.DictReader(open(out_csv, newline="")))
    assert len(rows) >= 2 and {r["face_id"] for r in rows} == {"1", "2"}
    window.export_button.click()
    assert out_png.read_bytes()[:4] == b"\x89PNG" and window.error_banner.isHidden()
    # cancelling the dialog leaves recording off
    window.ask_save_path = lambda *a: None
    window.record_button.click()
    assert not window.record_button.isChecked() and not window.controller.recording


def test_export_before_any_result_is_a_message(window, tmp_path):
    window.ask_save_path = lambda *a: str(tmp_path / "s.png")
    window.export_button.click()
    assert window.error_banner.isVisible() and "nothing to summarise" in window.error_label.text()


def test_settings_persist_between_runs(qtbot, qsettings, fake_factory):
    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    qtbot.addWidget(win)
    assert win.settings == AppSettings()
    dialog = SettingsDialog(win.settings, {"backend": "onnxruntime", "device": "CPUExecutionProvider"}, win)
    assert "onnxruntime on CPUExecutionProvider" in dialog.active_label.text()
    dialog.every.setValue(5)
    dialog.smoothing.setCurrentText("ema")
    dialog.strength.setValue(0.25)
    dialog.max_faces.setValue(7)
    dialog.backend.setCurrentText("onnxruntime")
    dialog.bundle.setCurrentText("/tmp/my-bundle")
    dialog.combiner.setCurrentText("balanced")
    win.apply_settings(dialog.result_settings())
    win.set_scale("sentiment3")
    win.mode_combo.setCurrentIndex(1)
    win.close()

    again = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[0, 2])
    qtbot.addWidget(again)
    expected = dataclasses.replace(AppSettings(), every=5, smoothing="ema", smoothing_strength=0.25, max_faces=7,
                                   backend="onnxruntime", bundle="/tmp/my-bundle", scale="sentiment3",
                                   realtime=False, combiner="balanced")
    assert again.settings == expected
    assert again.scale_buttons["sentiment3"].isChecked() and again.mode_combo.currentIndex() == 1
    opts = again.settings.to_options()
    assert (opts.every, opts.smoothing, opts.max_faces, opts.keep_images) == (5, "ema", 7, True)
    assert again.camera_combo.count() == 2 and again.camera_button.isEnabled()


def test_headless_bad_source_exits_nonzero(tmp_path, capsys):
    from rtfer.ui.app import main

    code = main(["--source", str(tmp_path / "missing.mp4"), "--screenshot", str(tmp_path / "s.png"),
                 "--quit-after", "1"])
    assert code == 2
    assert "rtfer-app: error: input not found" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_headless_screenshot(qapp, monkeypatch, tmp_path, group_video, fake_factory):
    import rtfer.ui.controller
    from rtfer.ui.app import main

    monkeypatch.setattr(rtfer.ui.controller, "_default_pipeline_factory", fake_factory)
    out = tmp_path / "shot.png"
    ini = tmp_path / "s.ini"
    code = main(["--source", str(group_video), "--screenshot", str(out), "--quit-after", "0.5",
                 "--settings-file", str(ini), "--bundle", "/models/other", "--fast"])
    assert code == 0
    assert fake_factory.made[0].options.bundle == "/models/other"
    from PyQt6.QtCore import QSettings

    stored = AppSettings.load(QSettings(str(ini), QSettings.Format.IniFormat))
    assert stored.bundle == "default" and stored.realtime  # command-line options are for this session only
    from PyQt6.QtGui import QImage

    image = QImage(str(out))
    assert image.width() >= 1000 and image.height() >= 700
    assert image.format() == QImage.Format.Format_Indexed8  # 256-colour docs screenshot by default
    assert fake_factory.made and fake_factory.made[0].runs >= 1


def test_pause_and_seek_from_the_controls(qtbot, window, group_video, fake_factory):
    fake_factory.kwargs = {"delay_s": 0.05}
    window.open_source(str(group_video))
    qtbot.waitUntil(lambda: window.results_shown > 0 and window.seek_slider.isEnabled(), timeout=5000)
    window.play_button.click()
    assert window.controller.paused and window.play_button.text() == "Resume"
    window.seek_slider.setValue(750)  # 75% of 1.2 s = 0.9 s
    window._seek_released()
    window.play_button.click()
    assert not window.controller.paused
    wait_idle(qtbot, window)
    pipe = fake_factory.made[0]
    assert pipe.runs == 2 and pipe.first_times[1] == pytest.approx(0.9, abs=0.051)
    assert window.play_button.text() == "Play"


def test_drop_a_video_onto_the_window(qtbot, window, group_video):
    from PyQt6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PyQt6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(group_video))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert window.source_spec == str(group_video)
    wait_idle(qtbot, window)
    assert window.results_shown > 0 and window.source_label.text() == "group.mp4"


def test_headless_without_source_shows_the_empty_window(qapp, tmp_path):
    from PyQt6.QtGui import QImage

    from rtfer.ui.app import main

    out = tmp_path / "empty.png"
    t0 = time.monotonic()
    assert main(["--screenshot", str(out), "--quit-after", "0.3", "--settings-file", str(tmp_path / "s.ini")]) == 0
    assert time.monotonic() - t0 < 5
    assert QImage(str(out)).width() >= 1000


def test_settings_offer_the_chosen_bundles_own_combiners(qtbot, qsettings, fake_factory):
    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    qtbot.addWidget(win)
    dialog = SettingsDialog(win.settings, None, win)
    names = [dialog.combiner.itemText(i) for i in range(dialog.combiner.count())]
    # the default bundle's, from its bundle.json
    assert names == ["default", "balanced", "flip", "flip_balanced", "tilted", "flip_tilted"]
    dialog.combiner.setCurrentText("flip")
    dialog.bundle.setCurrentText("fast")  # carries no flip combiner: the choice falls back to default
    assert [dialog.combiner.itemText(i) for i in range(dialog.combiner.count())] == ["default", "balanced"]
    assert dialog.combiner.currentText() == "default"
    dialog.combiner.setCurrentText("balanced")
    dialog.bundle.setCurrentText("default")  # a combiner both carry stays chosen
    assert dialog.combiner.currentText() == "balanced"
    dialog.bundle.setCurrentText("/no/such/bundle")
    assert [dialog.combiner.itemText(i) for i in range(dialog.combiner.count())] == ["default"]
