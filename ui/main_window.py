"""The main window: source controls, live view, probability bars, timeline, recording, status bar.

Widgets only display and forward clicks; the :class:`rtfer.ui.controller.Controller` does the work on its thread and
talks back through :class:`rtfer.ui.bridge.ControllerBridge` signals.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QSettings, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QShortcut
from PyQt6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QMainWindow,
                             QPushButton, QSlider, QSplitter, QToolButton, QVBoxLayout, QWidget)

from rtfer.run import STAGES
from rtfer.ui.bridge import ControllerBridge
from rtfer.ui.controller import Controller, LiveStats, list_cameras
from rtfer.ui.settings import SCALES, AppSettings, SettingsDialog
from rtfer.ui.widgets import SCALE_TITLES, ProbabilityPanel, TimelineWidget, VideoView

log = logging.getLogger(__name__)

STAGE_SHORT = {"decode": "dec", "detect": "det", "track": "trk", "align": "aln", "infer": "inf", "stack": "stk",
               "smooth": "smo"}


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class MainWindow(QMainWindow):
    """The rtfer desktop window. ``qsettings`` defaults to the user's ``rtfer/rtfer-app`` scope; tests pass a
    temporary INI file. ``pipeline_factory`` replaces :class:`rtfer.pipeline.Pipeline` (tests)."""

    closed = pyqtSignal()

    def __init__(self, qsettings: QSettings | None = None, *, pipeline_factory: Callable[..., Any] | None = None,
                 cameras: list[int] | None = None) -> None:
        super().__init__()
        self.setWindowTitle("rtfer — facial emotion analytics")
        self.qsettings = qsettings if qsettings is not None else QSettings("rtfer", "rtfer-app")
        self.settings = AppSettings.load(self.qsettings)
        #: Settings for this session only (command-line options such as --bundle); never written to QSettings.
        self.overrides: dict[str, Any] = {}
        self.bridge = ControllerBridge(self)
        self.controller = Controller(self.bridge.callbacks, pipeline_factory=pipeline_factory)
        self.controller.scale = self.settings.scale
        self.source_spec: Any = None
        self.last_error: str | None = None
        self.last_stats = LiveStats()
        self.results_shown = 0
        self._seeking = False

        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(6, 6, 6, 2)
        root.setSpacing(4)
        root.addLayout(self._build_source_row(cameras))
        root.addLayout(self._build_seek_row())
        root.addWidget(self._build_error_banner())

        self.view = VideoView()
        self.panel = ProbabilityPanel()
        self.timeline = TimelineWidget(self.controller.timeline)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(4)
        right_layout.addLayout(self._build_scale_row())
        right_layout.addWidget(self.panel, 1)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.view)
        top.addWidget(right)
        top.setStretchFactor(0, 3)
        top.setStretchFactor(1, 1)
        top.setSizes([900, 320])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.timeline)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([500, 330])
        root.addWidget(split, 1)
        self.setCentralWidget(central)
        self._build_status_bar()
        self._apply_scale(self.settings.scale)

        self.bridge.resultReady.connect(self._on_result)
        self.bridge.error.connect(self.show_error)
        self.bridge.info.connect(self._on_info)
        self.bridge.state.connect(self._on_state)
        self.bridge.finished.connect(self._on_finished)
        self.bridge.progress.connect(self._on_progress)
        for keys, slot in (("Space", self.toggle_play), ("Ctrl+O", self._choose_video),
                           ("Ctrl+Shift+O", self._choose_folder), ("Esc", self.stop)):
            QShortcut(QKeySequence(keys), self, activated=slot)
        self.setAcceptDrops(True)  # drop a video, an image or a folder onto the window to open it
        self.resize(1280, 860)
        self._update_buttons()

    # -- construction ------------------------------------------------------------------------------------------------
    def _build_source_row(self, cameras: list[int] | None) -> QHBoxLayout:
        """Row 1: where the pictures come from (camera, video, image folder), the source name, settings."""
        row = QHBoxLayout()
        self.camera_combo = QComboBox()
        self.camera_button = QPushButton("Start camera")
        self.camera_button.clicked.connect(self._start_camera)
        refresh = QToolButton()
        refresh.setText("↻")
        refresh.setToolTip("Look for cameras again")
        refresh.clicked.connect(lambda: self.refresh_cameras())
        self.refresh_cameras(cameras)
        open_video = QPushButton("Open video…")
        open_video.clicked.connect(self._choose_video)
        open_folder = QPushButton("Open image folder…")
        open_folder.clicked.connect(self._choose_folder)
        self.source_label = QLabel("No source")
        self.source_label.setStyleSheet("font-weight: bold; padding-left: 8px;")
        self.source_label.setMinimumWidth(120)
        settings_button = QPushButton("Settings…")
        settings_button.clicked.connect(self.open_settings)
        load_model = QPushButton("Load adapted model…")
        load_model.setToolTip("Use a bundle folder written by `rtfer adapt` (or any other model bundle)")
        load_model.clicked.connect(self._choose_bundle)
        for widget in (self.camera_combo, refresh, self.camera_button, open_video, open_folder):
            row.addWidget(widget)
        row.addWidget(self.source_label, 1)
        row.addWidget(load_model)
        row.addWidget(settings_button)
        return row

    def _build_seek_row(self) -> QHBoxLayout:
        """Row 2: play/pause/stop, file mode, seek bar, recording and export."""
        row = QHBoxLayout()
        self.play_button = QPushButton("Play")
        self.play_button.clicked.connect(self.toggle_play)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["Play at real time", "Process as fast as possible"])
        self.mode_combo.setCurrentIndex(0 if self.settings.realtime else 1)
        self.mode_combo.setToolTip("For video files. Cameras always run live (dropping frames when processing is "
                                   "slower); image folders are processed image by image")
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.seek_slider = QSlider(Qt.Orientation.Horizontal)
        self.seek_slider.setRange(0, 1000)
        self.seek_slider.setMinimumWidth(120)
        self.seek_slider.sliderPressed.connect(lambda: setattr(self, "_seeking", True))
        self.seek_slider.sliderReleased.connect(self._seek_released)
        self.position_label = QLabel("--:-- / --:--")
        self.record_button = QPushButton("● Record CSV")
        self.record_button.setCheckable(True)
        self.record_button.toggled.connect(self._record_toggled)
        self.record_video_check = QCheckBox("+ annotated video")
        self.record_video_check.setChecked(self.settings.record_video)
        self.export_button = QPushButton("Export summary…")
        self.export_button.clicked.connect(self._export)
        for widget in (self.play_button, self.stop_button, self.mode_combo):
            row.addWidget(widget)
        row.addWidget(self.seek_slider, 1)
        for widget in (self.position_label, self.record_button, self.record_video_check, self.export_button):
            row.addWidget(widget)
        return row

    def _build_error_banner(self) -> QWidget:
        self.error_banner = QWidget()
        self.error_banner.setObjectName("errorBanner")
        self.error_banner.setStyleSheet("#errorBanner { background: #fdecea; border: 1px solid #e0a39d; "
                                        "border-radius: 3px; }")
        row = QHBoxLayout(self.error_banner)
        row.setContentsMargins(8, 4, 4, 4)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #8a1c12;")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.error_banner.hide)
        row.addWidget(self.error_label, 1)
        row.addWidget(close)
        self.error_banner.hide()
        return self.error_banner

    def _build_scale_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Show:"))
        self.scale_group = QButtonGroup(self)
        self.scale_buttons: dict[str, QPushButton] = {}
        for scale in SCALES:
            button = QPushButton(SCALE_TITLES[scale])
            button.setCheckable(True)
            self.scale_group.addButton(button)
            self.scale_buttons[scale] = button
            button.clicked.connect(lambda _=False, s=scale: self.set_scale(s))
            row.addWidget(button)
        row.addStretch(1)
        return row

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.fps_label = QLabel("– fps")
        self.latency_label = QLabel("latency –")
        self.dropped_label = QLabel("dropped 0")
        self.backend_label = QLabel("backend –")
        for label in (self.fps_label, self.latency_label, self.dropped_label, self.backend_label):
            bar.addPermanentWidget(label)

    # -- sources -------------------------------------------------------------------------------------------------------
    def refresh_cameras(self, cameras: list[int] | None = None) -> None:
        """Fill the camera list (probing indices 0..5 unless ``cameras`` is given)."""
        found = list_cameras() if cameras is None else list(cameras)
        self.camera_combo.clear()
        if found:
            self.camera_combo.addItems([f"Camera {i}" for i in found])
            for pos, index in enumerate(found):
                self.camera_combo.setItemData(pos, index)
        else:
            self.camera_combo.addItem("No camera found")
        self.camera_combo.setEnabled(bool(found))
        self.camera_button.setEnabled(bool(found))

    def _start_camera(self) -> None:
        index = self.camera_combo.currentData()
        if index is not None:
            self.open_source(int(index))

    def ask_open_path(self, title: str, folder: bool, filters: str = "") -> str | None:
        """File dialogs are isolated here so tests and automation can replace them."""
        start = self.settings.last_dir or str(Path.home())
        if folder:
            path = QFileDialog.getExistingDirectory(self, title, start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, title, start, filters)
        return path or None

    def ask_save_path(self, title: str, default_name: str, filters: str) -> str | None:
        start = os.path.join(self.settings.last_dir or str(Path.home()), default_name)
        path, _ = QFileDialog.getSaveFileName(self, title, start, filters)
        return path or None

    def _choose_video(self) -> None:
        path = self.ask_open_path("Open a video", folder=False,
                                  filters="Videos (*.mp4 *.avi *.mov *.mkv *.webm *.m4v);;Images (*.jpg *.jpeg "
                                          "*.png *.bmp);;All files (*)")
        if path:
            self.open_source(path)

    def _choose_folder(self) -> None:
        path = self.ask_open_path("Open a folder of images", folder=True)
        if path:
            self.open_source(path)

    def _choose_bundle(self) -> None:
        path = self.ask_open_path("Load an adapted model (bundle folder)", folder=True)
        if path:
            self.load_model(path)

    def load_model(self, folder: str) -> bool:
        """Use the bundle in ``folder`` from now on (stored in the settings; a running source restarts with it).
        A folder that is not a valid bundle is a message, and the current model stays."""
        from rtfer.errors import BundleError
        from rtfer.run import read_bundle_spec

        try:
            spec = read_bundle_spec(folder)
            spec.verify()
        except BundleError as exc:
            self.show_error(f"cannot load the model: {exc}")
            return False
        self.hide_error()
        base = (spec.raw.get("adaptation") or {}).get("base") or {}
        note = f" (adapted from {base.get('name')} {base.get('version')})" if base else ""
        self.apply_settings(dataclasses.replace(self.settings, bundle=str(Path(folder))))
        self.statusBar().showMessage(f"Model: {spec.name} {spec.version}{note}", 10000)
        return True

    def open_source(self, spec: Any) -> None:
        """Start processing ``spec`` (camera index, video, image or folder) with the current settings."""
        self.source_spec = spec
        if not isinstance(spec, int):
            self.settings.last_dir = str(Path(spec).parent if Path(spec).is_file() else Path(spec))
            self.settings.save(self.qsettings)
        name = f"Camera {spec}" if isinstance(spec, int) else Path(str(spec)).name
        self.source_label.setText(name)
        self.setWindowTitle(f"rtfer — {name}")
        self.hide_error()
        self.view.clear_image("Loading the model and opening the source…")
        self.panel.clear()
        self.timeline.clear()
        self.results_shown = 0
        try:
            effective = self.effective_settings()
            options = effective.to_options()
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid stored value
            self.show_error(f"cannot prepare the pipeline: {exc}")
            return
        self.controller.start(spec, options, realtime=effective.realtime, stop_timeout=2.0)
        self._update_buttons()

    def toggle_play(self) -> None:
        if self.controller.state != "idle":
            if self.controller.paused:
                self.controller.resume()
            else:
                self.controller.pause()
        elif self.source_spec is not None:
            self.open_source(self.source_spec)
        self._update_buttons()

    def stop(self) -> None:
        # A bundle that is still loading cannot be interrupted; the worker then ends right after it, so the UI
        # does not wait for it (the finished signal updates the buttons).
        self.controller.stop(timeout=1.0)
        self._update_buttons()

    def effective_settings(self) -> AppSettings:
        """The stored settings with this session's :attr:`overrides` applied."""
        return dataclasses.replace(self.settings, **self.overrides)

    def set_overrides(self, **overrides: Any) -> None:
        """Session-only settings (command line); the file/real-time switch shows the effective mode."""
        self.overrides.update({k: v for k, v in overrides.items() if v is not None})
        self.mode_combo.blockSignals(True)
        self.mode_combo.setCurrentIndex(0 if self.effective_settings().realtime else 1)
        self.mode_combo.blockSignals(False)

    def _mode_changed(self, index: int) -> None:
        self.overrides.pop("realtime", None)
        self.settings.realtime = index == 0
        self.settings.save(self.qsettings)
        if self.controller.running and self.controller.source_kind == "video":
            self.open_source(self.source_spec)  # restart in the new mode

    def _seek_released(self) -> None:
        self._seeking = False
        duration = self.controller.duration_s
        if duration:
            self.controller.seek(self.seek_slider.value() / 1000 * duration)

    # -- scale -------------------------------------------------------------------------------------------------------
    def set_scale(self, scale: str) -> None:
        self._apply_scale(scale)
        self.settings.scale = scale
        self.settings.save(self.qsettings)

    def _apply_scale(self, scale: str) -> None:
        if scale not in SCALES:
            scale = "emotion"
        self.scale_buttons[scale].setChecked(True)
        self.panel.set_scale(scale)
        self.timeline.set_scale(scale)
        self.controller.scale = scale

    # -- recording / export ------------------------------------------------------------------------------------------
    def _record_toggled(self, checked: bool) -> None:
        if checked:
            path = self.ask_save_path("Record the CSV timeline", "rtfer_timeline.csv", "CSV files (*.csv)")
            if not path:
                self._set_record_checked(False)
                return
            video = str(Path(path).with_suffix(".mp4")) if self.record_video_check.isChecked() else None
            self.settings.record_video = self.record_video_check.isChecked()
            self.settings.save(self.qsettings)
            try:
                self.controller.start_recording(path, video)
            except Exception as exc:  # noqa: BLE001 - OutputError or a sink failure: show it, keep running
                self.show_error(f"cannot record: {exc}")
                self._set_record_checked(False)
                return
            self.statusBar().showMessage(f"Recording to {path}" + (f" and {video}" if video else ""))
            self.record_button.setText("■ Stop recording")
        else:
            try:
                paths = self.controller.stop_recording()
            except Exception as exc:  # noqa: BLE001
                self.show_error(str(exc))
                paths = []
            self.record_button.setText("● Record CSV")
            if paths:
                self.statusBar().showMessage("Saved " + ", ".join(str(p) for p in paths), 10000)

    def _set_record_checked(self, checked: bool) -> None:
        self.record_button.blockSignals(True)
        self.record_button.setChecked(checked)
        self.record_button.blockSignals(False)
        self.record_button.setText("■ Stop recording" if checked else "● Record CSV")

    def _export(self) -> None:
        path = self.ask_save_path("Export the summary", "rtfer_summary.png", "PNG images (*.png)")
        if not path:
            return
        try:
            out = self.controller.export_summary(path)
        except Exception as exc:  # noqa: BLE001 - nothing processed yet, unwritable path, ...
            self.show_error(f"cannot export the summary: {exc}")
            return
        self.statusBar().showMessage(f"Summary written to {out}", 10000)

    # -- settings ----------------------------------------------------------------------------------------------------
    def open_settings(self) -> None:
        dialog = SettingsDialog(self.effective_settings(), self.controller.info, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, settings: AppSettings) -> None:
        """Store ``settings`` (QSettings) and restart the current source with them (they replace overrides)."""
        self.overrides.clear()
        self.settings = settings
        self.settings.save(self.qsettings)
        if self.controller.running and self.source_spec is not None:
            self.open_source(self.source_spec)

    # -- messages from the controller --------------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Show ``message`` in the window (banner + status bar); never raises."""
        self.last_error = message
        self.error_label.setText(f"<b>Error:</b> {message}")
        self.error_banner.show()
        self.statusBar().showMessage(f"Error: {message}")
        if not self.view.has_image:
            self.view.clear_image("No picture: see the error above")

    def hide_error(self) -> None:
        self.error_banner.hide()

    def _on_result(self) -> None:
        latest = self.bridge.take_latest()
        if latest is None:
            return
        result, annotated, stats = latest
        image = annotated if annotated is not None else result.image
        if image is not None:
            self.view.set_image(image)
        self.panel.set_result(result)
        self.results_shown += 1
        self.last_stats = stats
        entry = self._image_entry(result)
        self.panel.set_caption(f"Image {entry.index}: {entry.name}" if entry is not None else "")
        self.fps_label.setText(f"{stats.fps:.1f} fps")
        parts = [f"{STAGE_SHORT.get(k, k)} {stats.latency_ms[k]:.0f}" for k in STAGES if k in stats.latency_ms]
        total = sum(stats.latency_ms.get(k, 0.0) for k in STAGES)
        self.latency_label.setText(f"latency {total:.0f} ms ({' · '.join(parts)})")
        self.latency_label.setToolTip("\n".join(f"{k}: {v:.1f} ms" for k, v in stats.latency_ms.items()))
        self.dropped_label.setText(f"dropped {stats.dropped}")
        if entry is not None:  # the picture, the bars and this label all belong to the same image
            self.position_label.setText(f"image {entry.index}")
        else:
            self._on_progress(stats.position_s, stats.duration_s)

    def _image_entry(self, result: Any):
        """The timeline's entry of the image ``result`` shows (image folders), else None."""
        buffer = self.controller.timeline
        if buffer.mode != "images":
            return None
        for entry in reversed(buffer.images(since_index=max(0, int(buffer.last_time) - 8))):
            if entry.name == str(result.source or ""):
                return entry
        return None

    def _on_progress(self, position_s: float, duration_s: object) -> None:
        if self.controller.timeline.mode == "images":  # no time position: _on_result names the image shown
            return
        duration = duration_s if isinstance(duration_s, (int, float)) else None
        self.position_label.setText(f"{_fmt_time(position_s)} / {_fmt_time(duration)}")
        if duration and not self._seeking:
            self.seek_slider.blockSignals(True)
            self.seek_slider.setValue(int(1000 * min(1.0, position_s / duration)))
            self.seek_slider.blockSignals(False)

    def _on_info(self, info: dict) -> None:
        text = f"{info.get('backend', '?')} on {info.get('device', '?')}"
        for key in ("detector", "bundle"):
            if info.get(key):
                text += f" · {info[key]}"
        self.backend_label.setText(text)
        self.backend_label.setToolTip(f"bundle: {info.get('bundle', '?')}")

    def _on_state(self, state: str) -> None:
        if state == "loading":
            self.statusBar().showMessage("Loading the model bundle and the detector…")
        elif state == "running":
            self.statusBar().showMessage("Running", 3000)
        elif state == "paused":
            self.statusBar().showMessage("Paused")
        self._update_buttons()

    def _on_finished(self, reason: str) -> None:
        if self.record_button.isChecked():
            self._set_record_checked(False)
            self.statusBar().showMessage("Recording finalised", 10000)
        elif reason == "end":
            self.statusBar().showMessage(f"Finished: {self.last_stats.frames} frames processed", 10000)
        elif reason == "stopped":
            self.statusBar().showMessage("Stopped", 5000)
        if reason == "error" and not self.view.has_image:
            self.view.clear_image("No picture: see the error above")
        QTimer.singleShot(0, self._update_buttons)

    def _update_buttons(self) -> None:
        running = self.controller.state != "idle"
        self.play_button.setText("Pause" if running and not self.controller.paused else
                                 ("Resume" if running else "Play"))
        self.play_button.setEnabled(running or self.source_spec is not None)
        self.stop_button.setEnabled(running)
        self.seek_slider.setEnabled(running and self.controller.seekable)

    @staticmethod
    def _dropped_path(event: QDragEnterEvent | QDropEvent) -> str | None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        local = [u.toLocalFile() for u in urls if u.isLocalFile()]
        return local[0] if local else None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if self._dropped_path(event):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        path = self._dropped_path(event)
        if path:
            event.acceptProposedAction()
            self.open_source(path)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.controller.stop()
        self.settings.save(self.qsettings)
        super().closeEvent(event)
        self.closed.emit()
