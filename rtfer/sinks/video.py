"""The annotated video: :class:`AnnotatedVideoSink` encodes each frame with its boxes and labels (PyAV, imported when
used) and carries the source's audio over."""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rtfer.errors import OutputError
from rtfer.sinks.atomic import MARK, AtomicPath
from rtfer.sinks.base import Sink, prepare_output_path
from rtfer.types import FrameResult

log = logging.getLogger(__name__)

#: Audio codecs copied into an MP4/MOV as they are (others are re-encoded); other containers copy what they accept.
_MP4_AUDIO_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
_AUDIO_ENCODERS = ("aac", "libopus", "libvorbis", "mp2")
#: The annotated video's default width cap (px): a 4K source is written at 1920x1080 unless ``--annotated-width``.
DEFAULT_MAX_WIDTH = 1920
#: libx264 settings: "superfast" has no lookahead and no macroblock tree, so the encoder holds few frames (bounded
#: memory at any resolution) and is 1.4-1.9x faster than "veryfast" for files about 1.6x larger at the same crf.
X264_OPTIONS = {"preset": "superfast", "crf": "23"}


class AnnotatedVideoSink(Sink):
    """Writes each ``FrameResult.image`` with boxes, track ids, labels and confidences (PyAV, H.264 or MPEG-4).

    Presentation times follow ``FrameResult.time_s`` (so a variable-frame-rate input stays in sync); frames whose
    time does not increase (image folders) are spaced 1/fps apart. Frames of another size are resized to the first.
    ``width``: the output width in pixels (never wider than the source; default: the source's, capped at
    :data:`DEFAULT_MAX_WIDTH`); a smaller frame is downscaled before the labels are drawn, so they stay readable.
    ``audio_from``: a video file whose first audio stream is carried over, remuxed packet by packet (no re-encoding)
    when the output container accepts its codec, re-encoded (AAC) otherwise; it is interleaved with the video as the
    frames come, and stops where the video stops. Frames arrive upright (capture applies a phone clip's rotation), so
    the output needs no rotation flag.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = 30.0, *, scale: str = "emotion",
                 codec: str | None = None, audio_from: str | os.PathLike | None = None,
                 width: int | None = None) -> None:
        super().__init__()
        if width is not None and int(width) < 16:
            raise ValueError(f"--annotated-width must be >= 16 pixels, got {width}")
        self.width = None if width is None else int(width)
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.scale = scale
        self.codec = codec
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._tb = Fraction(1, 1000)
        self.audio_from = audio_from
        self.audio_mode: str | None = None  # "copy" | "encode" once an audio stream is set up
        self._audio: dict[str, Any] | None = None

    def open(self) -> AnnotatedVideoSink:
        if self._opened:
            return self
        import av

        path = prepare_output_path(self.path, "video")
        options = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        self.output = AtomicPath(path, "annotated video")  # written under a temporary name, renamed on close
        try:
            self._container = av.open(str(self.output.begin()), "w", format=_muxer(path), options=options)
            self._container.metadata["comment"] = MARK  # tells an earlier rtfer video from a file of the user's
        except Exception as exc:  # noqa: BLE001 - FFmpeg errors for bad paths/extensions
            self.output.discard(str(exc))
            raise OutputError(f"cannot write video {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.path = path
        self._opened = True
        return self

    def _add_stream(self, w: int, h: int) -> None:
        import av

        codecs = [self.codec] if self.codec else ["libx264", "mpeg4"]
        for name in codecs:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001
                continue
            stream = self._container.add_stream(name, rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = self._tb
            stream.codec_context.time_base = self._tb
            if name == "libx264":
                stream.options = dict(X264_OPTIONS)
            self._stream = stream
            self._size = (w, h)
            if self.audio_from is not None:
                self._add_audio()
            return
        raise OutputError(f"cannot write video {self.path}: no encoder among {codecs}")

    accepts_annotated = True  # the run layer passes the frame the app already annotated for display

    def append(self, result: FrameResult, annotated: np.ndarray | None = None) -> None:
        """Encode ``result``'s frame, annotated here unless ``annotated`` (the same frame, already annotated) is
        given."""
        import av
        import cv2

        self._ensure_open()
        source = annotated if annotated is not None else result.image
        if source is None:
            raise ValueError("AnnotatedVideoSink needs FrameResult.image (ask the pipeline to keep frames)")
        if self._stream is None:
            self._add_stream(*self.output_size(source.shape[1], source.shape[0]))
        w, h = self._size
        if annotated is not None:
            image = annotated
        else:
            from rtfer.annotate import annotate

            image, result = _downscaled(result, w, h)  # labels drawn at the output size: as readable as at 1080p
            image = annotate(image, result, self.scale)
        if image.shape[:2] != (h, w):
            if abs(image.shape[0] - h) <= 1 and abs(image.shape[1] - w) <= 1:
                image = image[:h, :w]
            else:
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        pts = int(round(float(result.time_s) / self._tb))
        if pts <= self._last_pts:
            pts = self._last_pts + max(1, int(round(1 / (self.fps * self._tb))))
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts, frame.time_base = pts, self._tb
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._mux_audio(pts * self._tb + 0.5)
        except Exception as exc:  # noqa: BLE001
            self.output.error = self.output.error or _reason(exc)
            raise OutputError(f"cannot write video {self.path}: {_reason(exc)}") from None
        self.frames_written += 1

    def output_size(self, src_w: int, src_h: int) -> tuple[int, int]:
        """(width, height) written for a ``src_w`` x ``src_h`` source: ``width`` (or the source's capped at
        :data:`DEFAULT_MAX_WIDTH`), never wider than the source, aspect ratio kept, both even (yuv420p)."""
        target = min(src_w, self.width if self.width is not None else DEFAULT_MAX_WIDTH)
        scale = target / src_w
        return max(2, int(round(src_w * scale)) // 2 * 2), max(2, int(round(src_h * scale)) // 2 * 2)

    # -- audio ------------------------------------------------------------------------------------------------------
    def _add_audio(self) -> None:
        """Add an audio stream like ``audio_from``'s first one (before anything is muxed); no audio = no stream."""
        import av

        try:
            inp = av.open(str(self.audio_from))
        except Exception as exc:  # noqa: BLE001 - the video itself was readable; the audio is a bonus
            log.warning("annotated video: cannot read the audio of %s (%s)", self.audio_from, exc)
            return
        if not inp.streams.audio:
            inp.close()
            return
        ain = inp.streams.audio[0]
        vin = inp.streams.video[0] if inp.streams.video else None
        # capture times start at the video stream's first frame: the audio is shifted by the same offset
        offset = float(vin.start_time * vin.time_base) if vin is not None and vin.start_time is not None else 0.0
        name = ain.codec_context.name
        supported = getattr(self._container, "supported_codecs", set())
        mp4 = self.path.suffix.lower() in (".mp4", ".mov", ".m4v")
        try:
            if name in supported and (name in _MP4_AUDIO_COPY or not mp4):
                out = self._container.add_stream_from_template(ain)
                mode = "copy"
            else:
                enc = next((e for e in _AUDIO_ENCODERS if e in supported and _has_encoder(e)), None)
                if enc is None:
                    raise ValueError(f"no audio encoder for {self.path.suffix or 'this container'}")
                out = self._container.add_stream(enc, rate=ain.codec_context.sample_rate or 48000)
                if ain.codec_context.layout is not None:
                    out.codec_context.layout = ain.codec_context.layout.name
                mode = "encode"
        except Exception as exc:  # noqa: BLE001
            log.warning("annotated video: the audio (%s) is left out: %s", name, exc)
            inp.close()
            return
        self.audio_mode = mode
        self._audio = {"in": inp, "stream": ain, "out": out, "offset": offset, "packets": inp.demux(ain),
                       "pending": None, "done": False}
        log.info("annotated video: audio %s %s", name, "copied" if mode == "copy" else f"re-encoded as {out.name}")

    def _mux_audio(self, until_s: float | None) -> None:
        """Mux the source's audio up to ``until_s`` seconds (video time; None = all of it)."""
        a = self._audio
        if a is None or a["done"]:
            return
        ain, out, offset = a["stream"], a["out"], a["offset"]
        shift = int(round(offset / ain.time_base)) if ain.time_base else 0
        while True:
            packet = a["pending"]
            if packet is None:
                try:
                    packet = next(a["packets"])
                except (StopIteration, Exception):  # noqa: BLE001 - a damaged audio tail ends the audio
                    a["done"] = True
                    break
                if packet.pts is None or packet.size == 0:
                    continue
            t = float((packet.pts - shift) * ain.time_base)
            if until_s is not None and t > until_s:
                a["pending"] = packet
                return
            a["pending"] = None
            if t < 0:
                continue
            if self.audio_mode == "copy":
                packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = out
                self._container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for p in out.encode(frame):
                        self._container.mux(p)
        if self.audio_mode == "encode":
            for p in out.encode(None):
                self._container.mux(p)

    def _close_audio(self) -> None:
        a, self._audio = self._audio, None
        if a is not None:
            a["in"].close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        finished = False
        try:
            if self.output.error:
                return  # a write failed: no trailer; the temporary file is removed below
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            if self._audio is not None:  # up to the end of the last frame
                self._mux_audio(self._last_pts * self._tb + 1.0 / self.fps)
                a = self._audio
                if self.audio_mode == "encode" and not a["done"]:
                    a["done"] = True
                    for p in a["out"].encode(None):
                        self._container.mux(p)
            finished = True
        except Exception as exc:  # noqa: BLE001 - a full disk while writing the last packets or the index
            self.output.error = _reason(exc)
            raise OutputError(f"cannot write video {self.path}: {_reason(exc)}") from None
        finally:
            self._close_audio()
            try:
                self._container.close()  # writes the trailer (the MP4 index)
            except Exception as exc:  # noqa: BLE001
                finished = False
                self.output.error = self.output.error or _reason(exc)
                raise OutputError(f"cannot write video {self.path}: {_reason(exc)}") from None
            finally:
                self._container = None
                if finished and not self.output.error and self.output.tmp.exists():
                    self.output.commit()
                else:
                    self.output.empty = finished and not self.output.error  # no frame came: nothing to write
                    self.output.discard()
        if self.frames_written == 0:
            log.warning("annotated video %s has no frames", self.path)


def _downscaled(result: FrameResult, w: int, h: int) -> tuple[np.ndarray, FrameResult]:
    """``result``'s image at ``w`` x ``h`` and ``result`` with its faces in those pixels (unchanged when it fits)."""
    import dataclasses

    import cv2

    from rtfer.types import Faces

    image = result.image
    ih, iw = image.shape[:2]
    if abs(iw - w) <= 1 and abs(ih - h) <= 1:
        return image, result
    sx, sy = w / iw, h / ih
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
    f = result.faces
    scale = np.array([sx, sy], np.float32)
    faces = Faces(f.xyxy * np.tile(scale, 2), f.landmarks * scale, f.scores, f.track_ids)
    return small, dataclasses.replace(result, faces=faces, image=small, width=w, height=h)


def _reason(exc: BaseException) -> str:
    """An FFmpeg/OS error in a few words (errno text when there is one)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _muxer(path: Path) -> str | None:
    """The container format for ``path``'s suffix (the temporary name keeps it, but say it explicitly)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}.get(path.suffix.lower())


def _has_encoder(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001
        return False
