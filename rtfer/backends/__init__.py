"""Backend registry: name -> "module:Class". SDKs are imported inside the backend modules only."""
from __future__ import annotations

import importlib.util
import logging

from rtfer.backends.base import Backend
from rtfer._registry import resolve_entry
from rtfer.errors import BackendError

log = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "onnxruntime": "rtfer.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "rtfer.backends.torch:TorchBackend",
    "tensorrt": "rtfer.backends.tensorrt:TensorRTBackend",
}
#: What ``--backend auto`` tries, fastest first, for a CUDA device. On CPU, onnxruntime is fastest.
AUTO_ORDER_CUDA = ("tensorrt", "torch", "onnxruntime")
AUTO_ORDER_CPU = ("onnxruntime", "torch")


def backend_class(name: str) -> type[Backend]:
    return resolve_entry(BACKENDS, name, "backend")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _nvidia_driver_present() -> bool:
    """Cheap check for an NVIDIA driver, so CPU-only Linux machines never pay for importing torch (~0.5 GB RSS and
    seconds). Elsewhere we cannot tell cheaply and let torch answer."""
    import glob
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def _torch_cuda() -> bool:
    """torch sees a CUDA device (torch is imported only when an NVIDIA driver is present)."""
    if not (_has("torch") and _nvidia_driver_present()):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _ort_cuda() -> bool:
    """The installed onnxruntime wheel offers the CUDA provider (the plain ``onnxruntime`` wheel is CPU-only)."""
    if not _has("onnxruntime"):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def cuda_available(backend: str = "auto") -> bool:
    """True when ``backend`` can run on a CUDA device here: onnxruntime needs its CUDA provider, torch and TensorRT
    (which runs on torch's CUDA buffers) need torch to see a GPU; ``auto`` asks whether any of them can."""
    if backend == "onnxruntime":
        return _ort_cuda()
    if backend in ("torch", "tensorrt"):
        return _torch_cuda()
    return _torch_cuda() or _ort_cuda()


def resolve(backend: str, device: str, allow_fallback: bool = False) -> tuple[str, str]:
    """Turn ``auto`` backend/device into concrete choices, logging what was picked and why.

    A requested GPU that is missing is left for the backend to refuse, unless ``allow_fallback``: then the run moves
    to the CPU here, once, with one warning, and ``auto`` picks the fastest CPU backend (onnxruntime), rather than
    each member's backend falling back on its own (torch on CPU is many times slower than onnxruntime).
    Device ``auto`` is resolved for the backend asked: ``--backend onnxruntime`` with the CPU-only onnxruntime wheel
    runs on the CPU even where torch sees a GPU.
    """
    from rtfer.devices import parse_device

    if device == "auto":
        device = "cuda" if cuda_available(backend) else "cpu"
        log.info("device auto: %s for backend %s", device, backend)
    parsed = parse_device(device)  # one line for a device that is none ("gpu2", "cuda:x")
    if parsed.kind == "cuda" and allow_fallback and not cuda_available(backend):
        log.warning("%s requested but no CUDA device is usable: running on cpu instead (--allow-fallback)", device)
        device, parsed = "cpu", parse_device("cpu")
        if backend == "tensorrt":
            backend = "auto"  # TensorRT has no CPU mode: take the fastest CPU backend
    if backend != "auto":
        backend_class(backend)  # validates the name
        return backend, device
    order = AUTO_ORDER_CUDA if parsed.kind == "cuda" else AUTO_ORDER_CPU
    installed = [name for name in order if _has(name)]  # each backend is named after its SDK
    if parsed.kind == "cuda":  # only a backend that can reach the GPU; if none can, the first refuses in one line
        installed = [name for name in installed if cuda_available(name)] or installed
    if installed:
        log.info("backend auto: chose %s on %s", installed[0], device)
        return installed[0], device
    raise BackendError(f"no inference backend available for device {device!r}: pip install onnxruntime")


def create_backend(name: str, model_path, *, device: str = "cpu", member: dict | None = None,
                   allow_fallback: bool = False, max_batch: int = 64, precision: str = "auto") -> Backend:
    backend = backend_class(name)(model_path, device=device, member=member, allow_fallback=allow_fallback,
                                  max_batch=max_batch, precision=precision)
    backend.load()
    return backend
