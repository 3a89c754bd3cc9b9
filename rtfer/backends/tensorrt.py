"""TensorRT backend: FP16 engines built from the bundle's ONNX files (cached by ``engines``), run with torch CUDA
buffers and ``execute_async_v3``.

Not exercised by CI (TensorRT cannot be installed there); its logic is tested against the fake module in
the fake module in ``tests/fake_tensorrt.py``. The engine's dynamic batch profile is 1..max_batch; larger batches are split.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from rtfer.backends.base import Backend
from rtfer.errors import BackendError

log = logging.getLogger(__name__)

INSTALL_MESSAGE = "TensorRT is not installed: pip install 'rtfer[trt]' (or use --backend onnxruntime/torch)"
ENV_PRECISION = "RTFER_TRT_PRECISION"  # fp16 (default) or fp32


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(INSTALL_MESSAGE) from None
    return trt


def parse_cuda_index(device: str) -> int | None:
    """``cuda``/``cuda:N``/``tensorrt[:N]``/``gpu[:N]`` -> N (0 by default); ``cpu`` -> None; not a device: error."""
    from rtfer.devices import parse_device

    try:
        d = parse_device(device)
    except BackendError:
        raise BackendError(f"tensorrt backend: bad device {device!r} (use cuda or cuda:N)") from None
    return d.index if d.is_gpu else None


class TorchCuda:
    """The CUDA facts and objects the backend needs, through torch (one seam: CPU tests swap in host memory)."""

    def __init__(self, torch) -> None:
        self.torch = torch

    def device_count(self) -> int:
        return self.torch.cuda.device_count() if self.torch.cuda.is_available() else 0

    def gpu_name(self, index: int) -> str:
        return self.torch.cuda.get_device_name(index)

    def capability(self, index: int) -> tuple[int, int]:
        return tuple(self.torch.cuda.get_device_capability(index))

    def scope(self, index: int):
        """Make ``index`` the current device (TensorRT builds and deserializes on the current device)."""
        return self.torch.cuda.device(index)

    def device(self, index: int):
        return self.torch.device("cuda", index)

    def stream(self, device):
        return self.torch.cuda.Stream(device=device)

    def stream_scope(self, stream):
        return self.torch.cuda.stream(stream)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def load(self) -> None:
        self._fallback: Backend | None = None
        trt = _import_tensorrt()
        index = parse_cuda_index(self.device)
        try:
            import torch
        except ImportError:
            raise BackendError("the tensorrt backend needs torch for its CUDA buffers: pip install torch") from None
        self.cuda = TorchCuda(torch)
        count = self.cuda.device_count() if index is not None else 0
        problem = None
        if index is None:
            problem = f"TensorRT runs on CUDA devices only, not {self.device!r}"
        elif count == 0:
            problem = "TensorRT needs a CUDA device but torch sees none"
        elif index >= count:
            problem = f"no CUDA device {index} (found {count})"
        if problem:
            if not self.allow_fallback:
                raise BackendError(f"{problem}; use --backend onnxruntime or torch")
            self._load_fallback(problem)
            return
        self.trt, self.torch = trt, torch
        if self.precision not in ("fp16", "fp32"):  # --precision fp16/fp32 wins over the environment
            self.precision = os.environ.get(ENV_PRECISION, "fp16")
        with self.cuda.scope(index):
            self._load_engine(index)
            self._allocate(index)
        self.active_device = f"cuda:{index} ({self.precision} engine)"
        log.info("tensorrt: %s runs %s on %s", self.model_path.name, self.engine_path.name, self.cuda.gpu_name(index))

    def _load_fallback(self, problem: str) -> None:
        """Visible fallback, only when asked for: run the same ONNX file with onnxruntime on the CPU."""
        from rtfer.backends.onnxruntime import OnnxRuntimeBackend

        log.warning("tensorrt: %s; falling back to onnxruntime on cpu", problem)
        self._fallback = OnnxRuntimeBackend(self.model_path, device="cpu", member=self.member, allow_fallback=True,
                                            max_batch=self.max_batch)
        self._fallback.load()
        self.active_device = f"cpu (onnxruntime fallback: {problem})"

    def _build(self, index: int, force: bool = False):
        from rtfer.engines import EngineBuildError, GpuInfo, build_engine

        gpu = GpuInfo(self.cuda.gpu_name(index), self.cuda.capability(index))
        try:
            return build_engine(self.model_path, input_size=self.input_size, precision=self.precision,
                                min_batch=1, opt_batch=min(8, self.max_batch), max_batch=self.max_batch, gpu=gpu,
                                device=index, force=force)
        except EngineBuildError as exc:
            raise BackendError(f"tensorrt: {exc}") from None

    def _load_engine(self, index: int) -> None:
        trt = self.trt
        from rtfer.engines.builder import make_logger

        self.trt_logger = make_logger(trt)  # must outlive the runtime and engine
        self.runtime = trt.Runtime(self.trt_logger)
        self.engine_path = self._build(index)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:  # an engine from another TensorRT build, or damaged after the cache check
            log.warning("tensorrt: cannot deserialize %s; rebuilding it", self.engine_path)
            self.engine_path = self._build(index, force=True)
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise BackendError(f"tensorrt: cannot deserialize the engine built for {self.model_path.name}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"tensorrt: {self.model_path.name} must have one input and one output, "
                               f"got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.engine_max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])

    def _allocate(self, index: int) -> None:
        """Device buffers for the largest batch; each call uses a leading slice of them."""
        torch, trt = self.torch, self.trt
        self.cuda_device = self.cuda.device(index)
        self.stream = self.cuda.stream(self.cuda_device)
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        in_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        out_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        n, s = self.engine_max_batch, self.input_size
        self.input_buffer = torch.empty((n, 3, s, s), dtype=in_dtype, device=self.cuda_device)
        self.output_buffer = torch.empty((n, classes), dtype=out_dtype, device=self.cuda_device)
        self.num_classes = classes

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        torch = self.torch
        n = len(chunk)
        x = self.input_buffer[:n]
        y = self.output_buffer[:n]
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise BackendError(f"tensorrt: batch shape {tuple(x.shape)} is outside the engine's profile")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        with self.cuda.stream_scope(self.stream):  # copy-in, inference and copy-out are ordered on one stream
            x.copy_(torch.from_numpy(np.ascontiguousarray(chunk, np.float32)), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"tensorrt: inference failed for {self.model_path.name}")
            out = y.to("cpu", torch.float32, copy=True)  # never a view of the reused buffer
        self.stream.synchronize()
        return out.numpy()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._fallback is not None:
            return self._fallback.infer(batch)
        batch = np.asarray(batch)
        expected = (3, self.input_size, self.input_size)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"tensorrt: expected a (n, {', '.join(map(str, expected))}) batch, got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = min(self.max_batch, self.engine_max_batch)
        outs = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    def describe(self) -> str:
        return f"{self.name} on {self.active_device}"
