"""Thin Qt adapter: turns the controller's worker-thread callbacks into queued Qt signals.

Frame results are coalesced: the worker stores the newest one and emits ``resultReady`` only when the UI has
taken the previous one, so a slow UI shows the latest frame and never builds a backlog.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from PyQt6.QtCore import QObject, pyqtSignal

from rtfer.types import FrameResult
from rtfer.ui.controller import Callbacks, LiveStats


class ControllerBridge(QObject):
    """Signals for a :class:`rtfer.ui.controller.Controller`; pass :attr:`callbacks` to the controller."""

    resultReady = pyqtSignal()
    error = pyqtSignal(str)
    progress = pyqtSignal(float, object)  # position_s, duration_s (None when unknown)
    info = pyqtSignal(dict)
    state = pyqtSignal(str)
    finished = pyqtSignal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._latest: tuple[FrameResult, Any, LiveStats] | None = None
        self._pending = False
        self._last_progress = 0.0
        self.callbacks = Callbacks(on_result=self._on_result, on_error=self.error.emit,
                                   on_progress=self._on_progress, on_info=self.info.emit,
                                   on_state=self.state.emit, on_finished=self.finished.emit)

    def _on_result(self, result: FrameResult, annotated: Any, stats: LiveStats) -> None:
        with self._lock:
            self._latest = (result, annotated, stats)
            if self._pending:
                return
            self._pending = True
        self.resultReady.emit()

    def _on_progress(self, position_s: float, duration_s: float | None) -> None:
        now = time.monotonic()
        if now - self._last_progress >= 0.2:  # a seek bar needs a few updates a second, not one per frame
            self._last_progress = now
            self.progress.emit(position_s, duration_s)

    def take_latest(self) -> tuple[FrameResult, Any, LiveStats] | None:
        """The newest (result, annotated image, stats), once; None when nothing new arrived."""
        with self._lock:
            latest, self._latest = self._latest, None
            self._pending = False
        return latest
