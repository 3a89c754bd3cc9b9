"""Thin display widgets: the annotated frame, per-face probability bars and the scrolling timeline.

They only draw what they are given; none of them runs inference or touches the pipeline.
"""
from __future__ import annotations

import html
import logging

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QRectF, Qt, QTimer
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPixmap
from PyQt6.QtWidgets import QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from rtfer.colors import EMOTION_COLORS_HEX, LEVEL_COLORS_HEX, identity_style, valence_hex
from rtfer.labels import CLASSES, scale_levels, to_scale
from rtfer.types import FrameResult
from rtfer.ui.timeline_model import ImageEntry, TimelineBuffer, TrackSeries

log = logging.getLogger(__name__)

#: One colour map for the app, the annotated video, the summary PNG and the report (rtfer.colors).
CLASS_COLORS = {**EMOTION_COLORS_HEX, **LEVEL_COLORS_HEX}
SCALE_TITLES = {"emotion": "7 emotions", "sentiment5": "5 levels", "sentiment3": "3 levels"}


def track_color(track_id: int) -> str:
    """The neutral tone of a track id (rtfer.colors.identity_style): identity never uses a hue, which always means an
    emotion or a valence; the dash pattern and marker tell tracks of the same tone apart."""
    return identity_style(track_id)[0]


def track_pen(track_id: int, width: float = 2.0):
    """The pen of a track's valence line: its tone and dash pattern."""
    tone, dash, _, _ = identity_style(track_id)
    pen = pg.mkPen(tone, width=width)
    if dash:
        pen.setDashPattern(list(dash))
    return pen


def track_legend(track_id: int) -> str:
    """Rich text naming a track with a sample of its line (``━━━ #3``, ``╍╍╍ #4``...)."""
    tone, _, _, glyph = identity_style(track_id)
    label = f"#{track_id}" if track_id >= 0 else "face"
    return f"<span style='color:{tone}; font-weight:bold'>{glyph} {label}</span>"


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
        self.caption = QLabel()  # image folders: which image the bars belong to
        self.caption.setTextFormat(Qt.TextFormat.PlainText)  # file names are shown as they are
        self.caption.setStyleSheet("color: #333333; font-weight: bold; padding: 2px 4px;")
        self.caption.hide()
        self._layout.addWidget(self.caption)
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

    def set_caption(self, text: str) -> None:
        """A line above the bars (image folders: the image they belong to); empty hides it."""
        self.caption.setText(text)
        self.caption.setVisible(bool(text))

    def clear(self) -> None:
        self._last = None
        for bar in self._bars:
            bar.hide()
        self._empty.show()
        self.set_caption("")


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
        # image folders: one scatter per plot (a point per face, x = the image's position in the folder)
        self._image_mode_drawn = False
        self._images: list[ImageEntry] = []
        self._image_valence = pg.ScatterPlotItem(size=9, pen=pg.mkPen("#333333", width=0.6))
        self._image_dominant = pg.ScatterPlotItem(size=9, symbol="s", pen=None)
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
        if self._image_mode_drawn:
            self._leave_image_mode()
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
        if self.buffer.mode == "images":
            self._refresh_images()
            return
        if self._image_mode_drawn:
            self._leave_image_mode()
        last = self.buffer.last_time
        start = max(0.0, last - self.window_s)
        self._series = self.buffer.snapshot(since_s=start)
        live = {s.track_id for s in self._series}
        for key in [k for k in self._valence_curves if k not in live]:
            self.valence_plot.removeItem(self._valence_curves.pop(key))
            self.dominant_plot.removeItem(self._dominant_curves.pop(key))
        for s in self._series:
            tone, _, marker, _ = identity_style(s.track_id)
            curve = self._valence_curves.get(s.track_id)
            if curve is None:
                curve = self.valence_plot.plot(pen=track_pen(s.track_id))
                self._valence_curves[s.track_id] = curve
                self._dominant_curves[s.track_id] = self.dominant_plot.plot(
                    pen=None, symbol={"^": "t"}.get(marker, marker), symbolSize=6, symbolPen=pg.mkPen(tone),
                    symbolBrush=pg.mkBrush(tone))
            curve.setData(s.times, s.valence)
            dominant = level_probs(s.probs, self.scale).argmax(axis=1).astype(np.float32)
            # spread tracks a little so overlapping tracks stay visible
            offset = ((s.track_id % 5) - 2) * 0.06
            self._dominant_curves[s.track_id].setData(s.times, dominant + offset)
        recent = [k for k in self.buffer.last_keys if k in self._valence_curves]
        if recent != self._legend_ids:
            entries = [track_legend(k) for k in recent]
            self.legend_label.setText("Faces on screen: &nbsp;" + " &nbsp; ".join(entries) if entries else "")
            self._legend_ids = recent
        self.valence_plot.setXRange(start, max(start + self.window_s, last), padding=0.01)
        self.redraws += 1

    # -- image folders ---------------------------------------------------------------------------------------------
    IMAGE_WINDOW = 60  # images shown at once (the newest)

    def _refresh_images(self) -> None:
        """Image folders: a point per face at its image's position (valence: filled with the valence colour;
        dominant: a square in the class colour). No lines: faces of different images are different people."""
        if not self._image_mode_drawn:
            for curves, plot in ((self._valence_curves, self.valence_plot),
                                 (self._dominant_curves, self.dominant_plot)):
                for curve in curves.values():
                    plot.removeItem(curve)
                curves.clear()
            self.valence_plot.addItem(self._image_valence)
            self.dominant_plot.addItem(self._image_dominant)
            self.dominant_plot.setLabel("bottom", "image (position in the folder)")
            self._image_mode_drawn = True
        last = self.buffer.last_image
        first = max(1, (last.index if last else 1) - self.IMAGE_WINDOW + 1)
        self._images = self.buffer.images(since_index=first)
        names = level_names(self.scale)
        xs, vals, doms, val_brushes, dom_brushes = [], [], [], [], []
        for e in self._images:
            n = len(e.valence)
            spread = (np.arange(n) - (n - 1) / 2) * (0.5 / max(n, 1))  # faces of one image side by side
            levels = level_probs(e.probs, self.scale) if n else np.zeros((0, len(names)))
            top = levels.argmax(axis=1) if n else np.zeros(0, int)
            xs.extend((e.index + spread).tolist())
            vals.extend(e.valence.tolist())
            doms.extend(top.tolist())
            val_brushes.extend(pg.mkBrush(valence_hex(v)) for v in e.valence.tolist())
            dom_brushes.extend(pg.mkBrush(CLASS_COLORS.get(names[k], "#555555")) for k in top.tolist())
        self._image_valence.setData(x=xs, y=vals, brush=val_brushes)
        self._image_dominant.setData(x=xs, y=doms, brush=dom_brushes)
        if last is not None:
            faces = len(last.valence)
            self.legend_label.setText(f"Image {last.index}: <b>{html.escape(last.name)}</b> &nbsp;·&nbsp; {faces} face"
                                      f"{'' if faces == 1 else 's'} (points: one per face; colours: valence above, "
                                      "emotion below)")
        else:
            self.legend_label.setText("")
        end = (last.index if last else 1) + 0.5
        self.valence_plot.setXRange(first - 0.5, max(end, first - 0.5 + min(self.IMAGE_WINDOW, 10)), padding=0.01)
        self.redraws += 1

    def _leave_image_mode(self) -> None:
        self.valence_plot.removeItem(self._image_valence)
        self.dominant_plot.removeItem(self._image_dominant)
        self._image_valence.clear()
        self._image_dominant.clear()
        self.dominant_plot.setLabel("bottom", "time (s)")
        self._images = []
        self._image_mode_drawn = False

    def _hover_image(self, x: float) -> str:
        """Image folders: every face of the image nearest to ``x`` (its position in the folder)."""
        entry = min(self._images, key=lambda e: abs(e.index - x), default=None)
        if entry is None or abs(entry.index - x) > 0.5:
            text = f"image {max(1, round(x))}: not analysed yet" if x > 0 else "no image"
        else:
            names = level_names(self.scale)
            parts = []
            for row, (val, probs) in enumerate(zip(entry.valence.tolist(), entry.probs)):
                levels = level_probs(probs, self.scale)
                top = int(np.argmax(levels))
                parts.append(f"<b>face {row}</b> {val:+.2f} {pretty(names[top])} {100 * levels[top]:.0f}%")
            text = (f"image {entry.index} ({html.escape(entry.name)}): &nbsp;" +
                    (" &nbsp;·&nbsp; ".join(parts) if parts else "no face"))
        self.hover_label.setText(text)
        return text

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
        if self.buffer.mode == "images":
            return self._hover_image(time_s)
        # only tracks with a point within a few frames of time_s were on screen then (a track that left 0.4 s ago
        # is not listed beside the faces in view)
        interval = TimelineBuffer.frame_interval(self._series)
        tolerance = 2.5 * interval if interval > 0 else 0.5
        values = TimelineBuffer.values_at(self._series, time_s, tolerance_s=tolerance)
        if not values:
            text = f"t = {time_s:.1f} s: no face"
        else:
            names = level_names(self.scale)
            parts = []
            for track_id, _t, val, probs in values:
                levels = level_probs(probs, self.scale)
                top = int(np.argmax(levels))
                parts.append(f"{track_legend(track_id)} {val:+.2f} {pretty(names[top])} {100 * levels[top]:.0f}%")
            text = f"t = {time_s:.1f} s (valence, dominant): &nbsp;" + " &nbsp;·&nbsp; ".join(parts)
        self.hover_label.setText(text)
        return text
