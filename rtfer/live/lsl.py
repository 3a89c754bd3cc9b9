"""The Lab Streaming Layer outlet (``--lsl [NAME]``): one sample per face per frame, and a marker stream.

Data stream ``NAME`` (type ``Emotion``, irregular rate, ``double64`` so that frame numbers and face ids stay exact):
the channels of :data:`CHANNELS` — ``frame``, ``time_s`` (the frame's time in its source), ``face_id``, the box
``x1 y1 x2 y2`` (pixels), the 7 smoothed probabilities in the canonical class order, ``valence`` and ``confidence`` —
with the values of the CSV timeline's row for that face. Each sample's timestamp is the frame's capture time (a
camera's frame when it was read, a file's frame when it was decoded, or released by real-time playback) on the LSL
clock, so that a recording with other streams (EEG, eye tracking) lines up; the analysis latency does not shift it.
A frame without faces sends no sample. The stream's XML description carries one ``channel`` (label, unit, type) per
value, the bundle (name and version) under ``acquisition`` and ``rtfer``, as LabRecorder and pyxdf expect.

Marker stream ``NAME-markers`` (type ``Markers``, one string channel): a JSON object per event,
``{"event": "run_start", "source": ..., "bundle": ...}`` and ``{"event": "run_end", "status": ..., "frames": ...}``.

The outlets are created at the first run's start, when the bundle is known, and again if a later run uses another
bundle (the app's settings), with the same ``source_id`` so that LabRecorder picks the stream up again.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from rtfer.labels import CLASSES
from rtfer.sinks.base import result_records
from rtfer.types import FrameResult

log = logging.getLogger(__name__)

#: (label, unit, type) per channel, in sample order.
CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("frame", "index", "FrameIndex"),
    ("time_s", "seconds", "MediaTime"),
    ("face_id", "id", "FaceID"),
    ("x1", "pixels", "BoxLeft"),
    ("y1", "pixels", "BoxTop"),
    ("x2", "pixels", "BoxRight"),
    ("y2", "pixels", "BoxBottom"),
    *((name, "probability", "Probability") for name in CLASSES),
    ("valence", "normalized", "Valence"),
    ("confidence", "probability", "Confidence"),
)
STREAM_TYPE = "Emotion"
MARKER_TYPE = "Markers"
CLOCK_RESYNC_S = 10.0  # how often the monotonic -> LSL clock offset is measured again
_configured = False


def configure_liblsl() -> None:
    """Keep liblsl's own log to warnings and errors (it prints INFO lines on stderr at start-up) unless the user has
    an lsl_api.cfg (``$LSLAPICFG``, ./lsl_api.cfg, ~/lsl_api/lsl_api.cfg, /etc/lsl_api/lsl_api.cfg), which then
    rules as usual. Only the first call in a process, before any other LSL call, has an effect."""
    global _configured
    if _configured:
        return
    _configured = True
    candidates = [os.environ.get("LSLAPICFG"), "lsl_api.cfg", Path.home() / "lsl_api" / "lsl_api.cfg",
                  "/etc/lsl_api/lsl_api.cfg"]
    if any(c and Path(c).is_file() for c in candidates):
        return
    import pylsl

    try:
        pylsl.set_config_content(f"[log]\nlevel = {0 if log.isEnabledFor(logging.DEBUG) else -1}\n")
    except (AttributeError, RuntimeError) as exc:  # an old liblsl: its log stays as it is
        log.debug("liblsl configuration: %s", exc)


class LSLSink:
    """A sink that publishes each frame's faces to an LSL outlet (see the module docstring)."""

    def __init__(self, name: str = "rtfer", *, source_id: str | None = None, wait_for_consumers_s: float = 0.0) -> None:
        """``wait_for_consumers_s``: at each run's start, wait up to that long for an inlet (a recorder) to connect
        to the data stream before the first frame (samples pushed before an inlet connects never reach it)."""
        self.name = name
        self.wait_for_consumers_s = wait_for_consumers_s
        self.source_id = source_id or f"rtfer:{name}@{socket.gethostname()}"
        self.samples = 0
        self.markers: list[str] = []  # the marker strings sent (tests, logs)
        self._pylsl = None
        self._outlet = None
        self._marker_outlet = None
        self._bundle: tuple[Any, Any] | None = None
        self._offset = 0.0
        self._offset_at = -float("inf")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def open(self) -> LSLSink:
        if self._pylsl is None:
            import pylsl

            configure_liblsl()
            self._pylsl = pylsl
            self._marker_outlet = pylsl.StreamOutlet(self._marker_info())
            log.info("LSL marker stream %r", f"{self.name}-markers")
        return self

    def close(self) -> None:
        self._outlet = None  # liblsl closes an outlet when its last reference goes
        self._marker_outlet = None

    def __enter__(self) -> LSLSink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- run hooks -------------------------------------------------------------------------------------------------
    def run_started(self, info: dict) -> None:
        bundle = (info.get("bundle_name"), info.get("bundle_version"))
        if self._outlet is None or bundle != self._bundle:
            if self._outlet is not None:
                log.info("LSL outlet %r recreated for bundle %s %s", self.name, *bundle)
            self._create_outlet(info)
            self._bundle = bundle
        if self.wait_for_consumers_s > 0 and not self._outlet.have_consumers():
            log.info("waiting up to %.1f s for an LSL inlet on %r", self.wait_for_consumers_s, self.name)
            self._outlet.wait_for_consumers(self.wait_for_consumers_s)
        self._sync_clock(force=True)
        self._mark({"event": "run_start", "source": info.get("source"), "kind": info.get("kind"),
                    "bundle": info.get("bundle")})

    def run_finished(self, stats: Any, status: str) -> None:
        self._mark({"event": "run_end", "source": str(getattr(stats, "input", "")), "status": status,
                    "frames": int(stats.frames)})

    # -- sink interface (the writer thread) ------------------------------------------------------------------------
    def append(self, result: FrameResult) -> None:
        n = len(result.faces)
        if not n:
            return
        if self._outlet is None:  # appended to outside a Run (the Python API): describe what we know
            self._create_outlet({})
        stamp = self.lsl_time(result.captured)
        for i, row in enumerate(result_records(result)):
            sample = [row["frame"], row["time_s"], row["face_id"], row["x1"], row["y1"], row["x2"], row["y2"],
                      *(row[c] for c in CLASSES), row["valence"], row["confidence"]]
            self._outlet.push_sample(sample, stamp, i == n - 1)  # one push to the network per frame
        self.samples += n

    def lsl_time(self, captured: float | None) -> float:
        """A :func:`time.monotonic` time on the LSL clock (now, when ``captured`` is None)."""
        if captured is None:
            return self._pylsl.local_clock()
        self._sync_clock()
        return float(captured) + self._offset

    # -- internals -------------------------------------------------------------------------------------------------
    def _sync_clock(self, force: bool = False) -> None:
        """Measure the offset between time.monotonic and the LSL clock (the same clock on Linux; not on every OS),
        taking the tightest of a few readings."""
        now = time.monotonic()
        if not force and now - self._offset_at < CLOCK_RESYNC_S:
            return
        best = None
        for _ in range(5):
            t0 = time.monotonic()
            lsl = self._pylsl.local_clock()
            t1 = time.monotonic()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, lsl - (t0 + t1) / 2)
        self._offset, self._offset_at = best[1], now

    def _create_outlet(self, info: dict) -> None:
        pylsl = self._pylsl
        stream = pylsl.StreamInfo(self.name, STREAM_TYPE, len(CHANNELS), pylsl.IRREGULAR_RATE, pylsl.cf_double64,
                                  self.source_id)
        desc = stream.desc()
        channels = desc.append_child("channels")
        for label, unit, kind in CHANNELS:
            channel = channels.append_child("channel")
            channel.append_child_value("label", label)
            channel.append_child_value("unit", unit)
            channel.append_child_value("type", kind)
        from rtfer import __version__

        bundle = f"{info.get('bundle_name') or 'unknown'} {info.get('bundle_version') or ''}".strip()
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", "rtfer")
        acquisition.append_child_value("model", bundle)
        acquisition.append_child_value("software_version", __version__)
        rt = desc.append_child("rtfer")
        rt.append_child_value("version", __version__)
        b = rt.append_child("bundle")
        b.append_child_value("name", str(info.get("bundle_name") or ""))
        b.append_child_value("version", str(info.get("bundle_version") or ""))
        rt.append_child_value("classes", ",".join(CLASSES))
        rt.append_child_value("smoothing", str(info.get("smoothing") or ""))
        rt.append_child_value("samples", "one per face per frame; none for a frame without faces")
        rt.append_child_value("timestamps", "the source frame's capture (camera) or decode (file) time, LSL clock")
        rt.append_child_value("markers", f"{self.name}-markers")
        self._outlet = pylsl.StreamOutlet(stream)
        log.info("LSL outlet %r (%s, %d channels, source_id %s)", self.name, STREAM_TYPE, len(CHANNELS),
                 self.source_id)

    def _marker_info(self):
        pylsl = self._pylsl
        info = pylsl.StreamInfo(f"{self.name}-markers", MARKER_TYPE, 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                                f"{self.source_id}:markers")
        desc = info.desc()
        desc.append_child("channels").append_child("channel").append_child_value("label", "event")
        desc.append_child_value("data", f"run start/end of the rtfer stream {self.name!r} as JSON")
        return info

    def _mark(self, event: dict) -> None:
        text = json.dumps(event, separators=(",", ":"))
        self.markers.append(text)
        del self.markers[:-100]  # bounded
        if self._marker_outlet is not None:
            self._marker_outlet.push_sample([text], self._pylsl.local_clock())


__all__ = ["CHANNELS", "LSLSink", "STREAM_TYPE"]
