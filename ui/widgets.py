"""Thin display widgets: the annotated frame, per-face probability bars and the scrolling timeline.

They only draw what they are given; none of them runs inference or touches the pipeline.
"""
from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QRectF, Qt, QTimer
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPixmap
from PyQt6.QtWidgets import QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from rtfer.colors import EMOTION_COLORS_HEX, LEVEL_COLORS_HEX
from rtfer.labels import CLASSES, scale_levels, to_scale
from rtfer.types import FrameResult
from rtfer.ui.timeline_model import TimelineBuffer, TrackSeries

log = logging.getLogger(__name__)

#: One colour map for the app, the annotated video, the summary PNG and the report (rtfer.colors).
CLASS_COLORS = {**EMOTION_COLORS_HEX, **LEVEL_COLORS_HEX}
SCALE_TITLES = {"emotion": "7 emotions", "sentiment5": "5 levels", "sentiment3": "3 levels"}


def track_color(track_id: int) -> str:
    """A colour per track id; golden-ratio hue steps keep nearby ids (#0, #1, ... #10) far apart."""
    hue = (int(track_id) * 0.618033988749895 + 0.58) % 1.0
    return QColor.fromHsvF(hue, 0.85, 0.72).name()


def level_names(scale: str) -> tuple[str, ...]:
    """Bar / axis labels for a display scale (``emotion`` = the 7 classes)."""
    return CLASSES if scale == "emotion" else scale_levels(scale)


def level_probs(probs: np.ndarray, scale: str) -> np.ndarray:
    """(..., 7) class probabilities -> (..., L) for the display scale."""
    return np.asarray(probs, np.float32) if scale == "emotion" else to_scale(probs, scale)


def pretty(name: str) -> str:
    return name.replace("_", " ")


def bgr_to_qimage(image: np.ndarray) -> QImage:
    """A deep-copied RGB QImage of a BGR uint8 frame (safe to keep after ``image`` changes)."""
    rgb = np.ascontiguousarray(image[..., ::-1])
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class VideoView(QLabel):
    """Shows the latest annotated frame, scaled to fit with its aspect ratio kept."""

    PLACEHOLDER = "No source yet — choose a camera, open a video or an image folder"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(320, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: #202225; color: #d0d0d0; font-size: 14px;")
        self._pixmap: QPixmap | None = None
        self.frames_shown = 0
        self.setText(self.PLACEHOLDER)

    def set_image(self, image_bgr: np.ndarray) -> None:
        self._pixmap = QPixmap.fromImage(bgr_to_qimage(image_bgr))
        self.frames_shown += 1
        self._rescale()

    def clear_image(self, text: str | None = None) -> None:
        self._pixmap = None
        self.clear()
        self.setText(text or self.PLACEHOLDER)

    @property
    def has_image(self) -> bool:
        return self._pixmap is not None

    def _rescale(self) -> None:
        if self._pixmap is not None:
            self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._rescale()


class FaceBars(QWidget):
    """Horizontal probability bars for one face on the chosen scale, painted directly (crisp and compact)."""

    ROW = 17
    HEADER = 22

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.track_id = -1
        self.names: tuple[str, ...] = CLASSES
        self.values = np.zeros(len(CLASSES), np.float32)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_face(self, track_id: int, probs: np.ndarray, scale: str) -> None:
        self.track_id = int(track_id)
        self.names = level_names(scale)
        self.values = level_probs(probs, scale)
        self.setFixedHeight(self.HEADER + self.ROW * len(self.names) + 6)
        self.update()

    @property
    def top_label(self) -> str:
        return self.names[int(np.argmax(self.values))]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w = self.width()
        bold = QFont(self.font())
        bold.setBold(True)
        p.setFont(bold)
        p.setPen(QColor(track_color(self.track_id)))
        face = f"Face #{self.track_id}" if self.track_id >= 0 else "Face"
        top = int(np.argmax(self.values))
        p.drawText(QRectF(4, 0, w - 8, self.HEADER), Qt.AlignmentFlag.AlignVCenter,
                   f"{face}: {pretty(self.names[top])} {100 * self.values[top]:.0f}%")
        p.setFont(self.font())
        label_w, pct_w = 96, 40
        bar_x, bar_w = label_w + 8, max(10, w - label_w - pct_w - 16)
        for i, (name, value) in enumerate(zip(self.names, self.values)):
            y = self.HEADER + i * self.ROW
            p.setPen(QColor("#333333"))
            p.drawText(QRectF(4, y, label_w, self.ROW), Qt.AlignmentFlag.AlignVCenter, pretty(name))
            p.fillRect(QRectF(bar_x, y + 3, bar_w, self.ROW - 6), QColor("#dcdcdc"))
            p.fillRect(QRectF(bar_x, y + 3, bar_w * float(np.clip(value, 0, 1)), self.ROW - 6),
                       QColor(CLASS_COLORS.get(name, "#555555")))
            p.drawText(QRectF(bar_x + bar_w + 4, y, pct_w, self.ROW),
                       Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, f"{100 * value:.0f}%")
        p.end()


class ProbabilityPanel(QScrollArea):
    """One :class:`FaceBars` per face of the latest frame, ordered by track id; widgets are reused."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setMinimumWidth(280)
        inner = QWidget()
        self._layout = QVBoxLayout(inner)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self._layout.setSpacing(2)
        self._empty = QLabel("No faces in view")
        self._empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._empty.setStyleSheet("color: #777777;")
        self._layout.addWidget(self._empty)
        self._bars: list[FaceBars] = []
        self._layout.addStretch(1)
        self.setWidget(inner)
        self.scale = "emotion"
        self._last: FrameResult | None = None

    @property
    def bars(self) -> list[FaceBars]:
        """The visible bar widgets, in display order."""
        return [b for b in self._bars if not b.isHidden()]

    def set_scale(self, scale: str) -> None:
        self.scale = scale
        if self._last is not None:
            self.set_result(self._last)

    def set_result(self, result: FrameResult) -> None:
        self._last = result
        probs = result.smoothed.probs
        ids = result.faces.track_ids
        order = sorted(range(len(ids)), key=lambda i: (ids[i] < 0, ids[i], i))
        while len(self._bars) < len(order):
            bar = FaceBars()
            self._layout.insertWidget(self._layout.count() - 1, bar)
            self._bars.append(bar)
        for bar, row in zip(self._bars, order):
            bar.set_face(int(ids[row]), probs[row], self.scale)
            bar.show()
        for bar in self._bars[len(order):]:
            bar.hide()
        self._empty.setVisible(not order)

    def clear(self) -> None:
        self._last = None
        for bar in self._bars:
            bar.hide()
        self._empty.show()


class TimelineWidget(QWidget):
    """Scrolling plots of valence and the dominant level per track, redrawn from a :class:`TimelineBuffer`
    by a timer (``interval_ms``), never per frame. Hovering shows every track's values at that time."""

    def __init__(self, buffer: TimelineBuffer, *, window_s: float = 30.0, interval_ms: int = 250,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.buffer = buffer
        self.window_s = window_s
        self.scale = "emotion"
        self._drawn_version = -1
        self._series: list[TrackSeries] = []
        self.redraws = 0

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#fbfbfb")
        # The legend is a label above the plots (an overlay would hide the curves under it); it lists the tracks
        # of the newest frame (the faces on screen now).
        self.legend_label = QLabel()
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.legend_label.setStyleSheet("padding: 0 4px;")
        self._legend_ids: list[int] = []
        layout.addWidget(self.legend_label)
        layout.addWidget(self.graphics, 1)
        self.hover_label = QLabel("Hover over the timeline to read values")
        self.hover_label.setTextFormat(Qt.TextFormat.RichText)
        self.hover_label.setWordWrap(True)
        self.hover_label.setStyleSheet("color: #555555; padding: 0 4px;")
        layout.addWidget(self.hover_label)

        axis_pen = pg.mkPen("#444444")
        self.valence_plot = self.graphics.addPlot(row=0, col=0)
        self.valence_plot.setLabel("left", "valence")
        self.valence_plot.setYRange(-1.05, 1.05, padding=0)
        self.valence_plot.showGrid(x=True, y=True, alpha=0.25)
        self.valence_plot.setMouseEnabled(x=False, y=False)
        self.valence_plot.hideButtons()
        self.valence_plot.addLine(y=0, pen=pg.mkPen("#999999", style=Qt.PenStyle.DashLine))
        self.dominant_plot = self.graphics.addPlot(row=1, col=0)
        self.dominant_plot.setLabel("bottom", "time (s)")
        self.dominant_plot.showGrid(x=True, y=True, alpha=0.25)
        self.dominant_plot.setMouseEnabled(x=False, y=False)
        self.dominant_plot.hideButtons()
        self.dominant_plot.setXLink(self.valence_plot)
        for plot in (self.valence_plot, self.dominant_plot):
            for name in ("left", "bottom"):
                plot.getAxis(name).setPen(axis_pen)
                plot.getAxis(name).setTextPen(axis_pen)
            plot.getAxis("left").setWidth(96)  # room for "very negative" and the axis title
        self.valence_plot.setMinimumHeight(80)
        self.dominant_plot.setMinimumHeight(110)  # keeps all seven class names readable
        self.setMinimumHeight(260)
        small = QFont()
        small.setPointSize(8)
        self.dominant_plot.getAxis("left").setTickFont(small)  # seven class names fit a short plot
        self._set_dominant_axis()

        self._valence_curves: dict[int, pg.PlotDataItem] = {}
        self._dominant_curves: dict[int, pg.PlotDataItem] = {}
        self._cursor = [pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#888888")) for _ in range(2)]
        for line, plot in zip(self._cursor, (self.valence_plot, self.dominant_plot)):
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
        self._proxy = pg.SignalProxy(self.graphics.scene().sigMouseMoved, rateLimit=30, slot=self._mouse_moved)

        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    def _set_dominant_axis(self) -> None:
        names = level_names(self.scale)
        self.dominant_plot.setLabel("left", "dominant")
        self.dominant_plot.getAxis("left").setTicks([[(i, pretty(n)) for i, n in enumerate(names)]])
        self.dominant_plot.setYRange(-0.5, len(names) - 0.5, padding=0)

    def set_scale(self, scale: str) -> None:
        self.scale = scale
        self._set_dominant_axis()
        self._drawn_version = -1
        self.refresh()

    def clear(self) -> None:
        for curves, plot in ((self._valence_curves, self.valence_plot), (self._dominant_curves, self.dominant_plot)):
            for curve in curves.values():
                plot.removeItem(curve)
            curves.clear()
        self.legend_label.setText("")
        self._legend_ids = []
        self._series = []
        self._drawn_version = -1

    def refresh(self) -> None:
        """Redraw from the buffer when it changed since the last redraw (called by the timer)."""
        version = self.buffer.version
        if version == self._drawn_version:
            return
        self._drawn_version = version
        last = self.buffer.last_time
        start = max(0.0, last - self.window_s)
        self._series = self.buffer.snapshot(since_s=start)
        live = {s.track_id for s in self._series}
        for key in [k for k in self._valence_curves if k not in live]:
            self.valence_plot.removeItem(self._valence_curves.pop(key))
            self.dominant_plot.removeItem(self._dominant_curves.pop(key))
        for s in self._series:
            color = track_color(s.track_id)
            curve = self._valence_curves.get(s.track_id)
            if curve is None:
                curve = self.valence_plot.plot(pen=pg.mkPen(color, width=2))
                self._valence_curves[s.track_id] = curve
                self._dominant_curves[s.track_id] = self.dominant_plot.plot(
                    pen=None, symbol="s", symbolSize=5, symbolPen=None, symbolBrush=pg.mkBrush(color))
            curve.setData(s.times, s.valence)
            dominant = level_probs(s.probs, self.scale).argmax(axis=1).astype(np.float32)
            # spread tracks a little so overlapping tracks stay visible
            offset = ((s.track_id % 5) - 2) * 0.06
            self._dominant_curves[s.track_id].setData(s.times, dominant + offset)
        recent = [k for k in self.buffer.last_keys if k in self._valence_curves]
        if recent != self._legend_ids:
            entries = [f"<span style='color:{track_color(k)}; font-weight:bold'>━ {f'#{k}' if k >= 0 else 'face'}"
                       "</span>" for k in recent]
            self.legend_label.setText("Faces on screen: &nbsp;" + " &nbsp; ".join(entries) if entries else "")
            self._legend_ids = recent
        self.valence_plot.setXRange(start, max(start + self.window_s, last), padding=0.01)
        self.redraws += 1

    def _mouse_moved(self, event) -> None:
        pos = event[0]
        for plot in (self.valence_plot, self.dominant_plot):
            if plot.sceneBoundingRect().contains(pos):
                self.hover_at(float(plot.vb.mapSceneToView(pos).x()))
                return

    def hover_at(self, time_s: float) -> str:
        """Show (and return) every track's valence and dominant level nearest to ``time_s``."""
        for line in self._cursor:
            line.setPos(time_s)
            line.setVisible(True)
        values = TimelineBuffer.values_at(self._series, time_s, tolerance_s=max(0.5, self.window_s / 60))
        if not values:
            text = f"t = {time_s:.1f} s: no face"
        else:
            names = level_names(self.scale)
            parts = []
            for track_id, _t, val, probs in values:
                levels = level_probs(probs, self.scale)
                top = int(np.argmax(levels))
                label = f"#{track_id}" if track_id >= 0 else "face"
                parts.append(f"<span style='color:{track_color(track_id)}'><b>{label}</b></span> "
                             f"{val:+.2f} {pretty(names[top])} {100 * levels[top]:.0f}%")
            text = f"t = {time_s:.1f} s (valence, dominant): &nbsp;" + " &nbsp;·&nbsp; ".join(parts)
        self.hover_label.setText(text)
        return text
