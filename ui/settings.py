"""Application settings: a dataclass, its QSettings persistence and the settings dialog."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from PyQt6.QtCore import QSettings
from PyQt6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                             QHBoxLayout, QLabel, QPushButton, QSpinBox, QWidget)

from rtfer.labels import LABEL_SCALES
from rtfer.run import BACKENDS as BACKEND_NAMES
from rtfer.run import bundle_combiners

log = logging.getLogger(__name__)

BACKENDS = ("auto", *BACKEND_NAMES)
SCALES = LABEL_SCALES


def smoothing_methods() -> tuple[str, ...]:
    """The smoothers the runtime offers."""
    from rtfer.run import smoothing_methods as methods

    return methods()


def detector_names() -> tuple[str, ...]:
    """``auto`` plus the detectors the runtime registers."""
    from rtfer.run import detector_names as names

    return ("auto", *names())


@dataclass
class AppSettings:
    """Everything the app remembers between runs."""

    bundle: str = "default"
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"  # classifier precision (rtfer --precision): auto = INT8 on CPU when the bundle accepted it
    combiner: str = "default"  # how the bundle's members combine (rtfer --combiner): default or e.g. balanced
    detector: str = "auto"
    every: int = 3
    smoothing: str = "hmm"
    smoothing_strength: float = 0.5
    max_faces: int = 50
    realtime: bool = True  # files: play at real time (True) or process as fast as possible (False)
    scale: str = "emotion"
    record_video: bool = False
    last_dir: str = ""

    def to_options(self) -> Any:
        """The :class:`rtfer.run.AnalyzeOptions` for these settings (images kept for the live view)."""
        from rtfer.run import AnalyzeOptions

        return AnalyzeOptions(bundle=self.bundle, backend=self.backend, device=self.device, detector=self.detector,
                              every=int(self.every), max_faces=int(self.max_faces), smoothing=self.smoothing,
                              smoothing_strength=float(self.smoothing_strength), keep_images=True,
                              precision=self.precision, combiner=self.combiner or "default")

    @classmethod
    def load(cls, qsettings: QSettings) -> AppSettings:
        """Read from ``qsettings``; a missing or unreadable key keeps its default."""
        values = {}
        for f in dataclasses.fields(cls):
            default = f.default
            if not qsettings.contains(f.name):
                continue
            try:
                values[f.name] = qsettings.value(f.name, default, type=type(default))
            except (TypeError, ValueError):
                log.warning("ignoring unreadable setting %s", f.name)
        return cls(**values)

    def save(self, qsettings: QSettings) -> None:
        for key, value in dataclasses.asdict(self).items():
            qsettings.setValue(key, value)
        qsettings.sync()


def _combo(items: tuple[str, ...], current: str, editable: bool = False) -> QComboBox:
    box = QComboBox()
    box.setEditable(editable)
    box.addItems(list(items))
    if current not in items:
        box.addItem(current)
    box.setCurrentText(current)
    return box


class SettingsDialog(QDialog):
    """Edit :class:`AppSettings`; shows the backend and device that are active now (from ``Pipeline.describe``)."""

    def __init__(self, settings: AppSettings, active: dict | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("rtfer settings")
        self.setMinimumWidth(480)
        self._settings = settings
        form = QFormLayout(self)

        self.bundle = _combo(("default",), settings.bundle, editable=True)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_bundle)
        row = QHBoxLayout()
        row.addWidget(self.bundle, 1)
        row.addWidget(browse)
        form.addRow("Model bundle", row)

        self.combiner = _combo(bundle_combiners(settings.bundle), settings.combiner, editable=True)
        self.combiner.setToolTip("default: best overall accuracy. balanced: class-balanced, finds rare emotions "
                                 "(fear, disgust) more often at some overall accuracy. tilted: in between, rare emotions "
                                 "more often for a few tenths of a point. flip_*: each face and its mirror image, a "
                                 "little more accurate for twice the classifier cost (the list is the bundle's own; "
                                 "rtfer info shows their figures)")
        form.addRow("Combiner", self.combiner)
        self.bundle.currentTextChanged.connect(self._refresh_combiners)

        self.backend = _combo(BACKENDS, settings.backend)
        form.addRow("Backend", self.backend)
        self.device = _combo(("auto", "cpu", "cuda", "cuda:0"), settings.device, editable=True)
        form.addRow("Device", self.device)
        active = active or {}
        if active:
            text = f"{active.get('backend', '?')} on {active.get('device', '?')}"
            if active.get("detector"):
                text += f", detector {active['detector']}"
            if active.get("bundle"):
                text += f", bundle {active['bundle']}"
        else:
            text = "not loaded yet (start a source)"
        self.active_label = QLabel(f"Active now: {text}")
        self.active_label.setWordWrap(True)
        form.addRow("", self.active_label)

        self.detector = _combo(detector_names(), settings.detector)
        form.addRow("Face detector", self.detector)
        self.every = QSpinBox()
        self.every.setRange(1, 60)
        self.every.setValue(int(settings.every))
        self.every.setToolTip("Detect faces every N frames and track them in between (faster)")
        form.addRow("Detect every N frames", self.every)
        self.smoothing = _combo(smoothing_methods(), settings.smoothing)
        form.addRow("Smoothing", self.smoothing)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(float(settings.smoothing_strength))
        form.addRow("Smoothing strength", self.strength)
        self.max_faces = QSpinBox()
        self.max_faces.setRange(1, 500)
        self.max_faces.setValue(int(settings.max_faces))
        form.addRow("Max faces", self.max_faces)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _refresh_combiners(self, bundle: str) -> None:
        current = self.combiner.currentText()
        names = bundle_combiners(bundle)
        self.combiner.clear()
        self.combiner.addItems(list(names))
        self.combiner.setCurrentText(current if current in names else "default")

    def _browse_bundle(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder")
        if path:
            self.bundle.setCurrentText(path)

    def result_settings(self) -> AppSettings:
        """The edited settings (the fields this dialog does not show are kept)."""
        return dataclasses.replace(
            self._settings, bundle=self.bundle.currentText().strip() or "default",
            combiner=self.combiner.currentText().strip() or "default",
            backend=self.backend.currentText(), device=self.device.currentText().strip() or "auto",
            detector=self.detector.currentText(), every=self.every.value(),
            smoothing=self.smoothing.currentText().strip() or "hmm", smoothing_strength=self.strength.value(),
            max_faces=self.max_faces.value())
