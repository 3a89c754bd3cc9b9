"""ONNX Runtime backend: CPU everywhere; CUDA / TensorRT execution providers where onnxruntime-gpu is installed."""
from __future__ import annotations

import logging
import os

import numpy as np

from rtfer.backends.base import Backend
from rtfer.errors import BackendError

log = logging.getLogger(__name__)

_PROVIDERS_FOR_DEVICE = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def select_providers(device: str, available: list[str], allow_fallback: bool = False) -> list[str]:
    """Intersect the providers a device asks for with the available ones; fail unless a fallback was asked for."""
    from rtfer.devices import parse_device

    try:
        kind = parse_device(device).kind
    except BackendError:
        raise BackendError(f"onnxruntime backend: unknown device {device!r} (use cpu, cuda[:N] or tensorrt[:N])") \
            from None
    wanted = _PROVIDERS_FOR_DEVICE[kind]
    chosen = [p for p in wanted if p in available]
    if wanted[0] not in available:
        if not allow_fallback:
            raise BackendError(
                f"onnxruntime has no {wanted[0]} (available: {', '.join(available)}); "
                "install onnxruntime-gpu or choose --device cpu")
        log.warning("onnxruntime: %s is not available, falling back to %s", wanted[0], chosen)
    return chosen or ["CPUExecutionProvider"]


def _threads_from_env(default: int) -> int:
    """$RTFER_ORT_THREADS when set to a positive count (batch workers set it so that N processes share the cores),
    else ``default``."""
    env = os.environ.get("RTFER_ORT_THREADS", "").strip()
    return int(env) if env and int(env) > 0 else max(1, default)


def default_threads() -> int:
    """Intra-op threads of the detector's session: $RTFER_ORT_THREADS, else half the cores. The pipeline runs the
    detector and the classifiers concurrently on two threads (measured on 2 cores: onnxruntime's default, every
    core and spin-waiting in each session, was 2-3x slower end to end)."""
    return _threads_from_env((os.cpu_count() or 2) // 2)


def classifier_threads() -> int:
    """Intra-op threads of a classifier member's session: $RTFER_ORT_THREADS, else every core. The detector runs on
    every ``--every``-th frame only, so with several faces a frame's classifier batch can use the core the detector
    leaves idle; without spin-waiting an idle intra-op thread costs nothing (six-face classroom, 2 cores: 1.6-1.9x
    -> 2.0-2.1x real time in ``rtfer bench``; one face unchanged)."""
    return _threads_from_env(os.cpu_count() or 1)


#: $RTFER_ORT_OPT_LEVEL values -> onnxruntime graph optimisation levels (default: all).
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def optimization_level():
    """The graph optimisation level: $RTFER_ORT_OPT_LEVEL (disable, basic, extended, all), default all
    (benchmarks/classifier_cost.py --opt-level measures each)."""
    import onnxruntime as ort

    name = os.environ.get("RTFER_ORT_OPT_LEVEL", "").strip().lower() or "all"
    if name not in OPT_LEVELS:
        raise BackendError(f"RTFER_ORT_OPT_LEVEL must be one of {', '.join(OPT_LEVELS)}, got {name!r}")
    return getattr(ort.GraphOptimizationLevel, OPT_LEVELS[name])


def session_options(threads: int = 0):
    """onnxruntime SessionOptions shared by every session rtfer creates: full graph optimisation, a bounded thread
    count and no spin-waiting (spinning threads burn the cores the other pipeline stages need)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = optimization_level()
    opts.intra_op_num_threads = int(threads) if threads else default_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def load(self) -> None:
        import onnxruntime as ort

        providers = select_providers(self.device, ort.get_available_providers(), self.allow_fallback)
        opts = session_options(classifier_threads())
        provider_args: list = []
        from rtfer.devices import parse_device

        index = parse_device(self.device).index
        for p in providers:
            if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                provider_args.append((p, {"device_id": index}))
            else:
                provider_args.append(p)
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            raise BackendError(f"cannot load {self.model_path.name} in onnxruntime: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()
        self.active_device = "cpu" if self.providers[0] == "CPUExecutionProvider" else f"{self.device} ({self.providers[0]})"
        if self.precision == "int8":
            self.active_device += " (int8)"
        log.info("onnxruntime: %s uses %s", self.model_path.name, ", ".join(self.providers))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            out = self.session.get_outputs()[0]
            return np.zeros((0, int(out.shape[-1]) if isinstance(out.shape[-1], int) else 7), np.float32)
        outs = [self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(chunk, np.float32)})[0]
                for chunk in self._chunks(batch)]
        return np.concatenate(outs).astype(np.float32, copy=False)
