"""PyTorch backend: rebuilds the member network through the model registry and loads its weights from the ONNX file.

``cpu``: FP32 eager (the reference). ``cuda[:N]``: FP16 autocast, channels_last, and one CUDA graph per batch-size
bucket (1, 2, 4, ..., max_batch): a batch is padded up to its bucket, the bucket's graph is replayed, and the
output is sliced back; the first batch that needs a bucket captures it.

The ONNX initializers are named after the module's state_dict keys (training/export.py guarantees this), so the
weights load by name; a missing or extra tensor is a BackendError naming it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rtfer.backends.base import Backend
from rtfer.errors import BackendError
from rtfer.labels import NUM_CLASSES

log = logging.getLogger(__name__)


# ---- bucketing: plain functions so CPU tests cover them -------------------------------------------------------------

def bucket_sizes(max_batch: int) -> list[int]:
    """Batch-size buckets 1, 2, 4, ... up to and including ``max_batch`` (the last one may not be a power of 2)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(int(max_batch))
    return sizes


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n`` items (1 <= n <= buckets[-1])."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"batch of {n} exceeds the largest bucket {buckets[-1]}")


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``batch`` along axis 0 up to ``size`` rows (returned as is when already that size)."""
    n = len(batch)
    if n > size:
        raise ValueError(f"cannot pad a batch of {n} down to {size}")
    if n == size:
        return batch
    pad = np.zeros((size - n,) + batch.shape[1:], dtype=batch.dtype)
    return np.concatenate([batch, pad])


def plan_batches(n: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split ``n`` items into chunks of at most ``max_batch``: (start, stop, bucket) per chunk."""
    buckets = bucket_sizes(max_batch)
    return [(s, min(s + max_batch, n), bucket_for(min(s + max_batch, n) - s, buckets)) for s in range(0, n, max_batch)]


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" / "cuda:N" -> ("cuda", N) (rtfer.devices parses). Anything else is a
    BackendError."""
    from rtfer.devices import parse_device as parse

    try:
        d = parse(device)
    except BackendError:
        d = None
    if d is None or d.kind == "tensorrt":
        raise BackendError(f"torch backend: unknown device {device!r} (use cpu or cuda[:N])")
    return d.kind, d.index


def read_onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Initializers of an ONNX file as float32 arrays (FP16-stored weights are cast back), by name."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
        raise BackendError(f"cannot read {Path(path).name} as ONNX: {exc}") from exc
    out = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        out[init.name] = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr
    return out


def load_onnx_weights(model, path: str | Path, input_size: int | None = None) -> None:
    """Load an exported member's weights into ``model`` (built with the same architecture): the ONNX initializers
    are exactly the weights its forward pass uses, under state_dict names. A missing, extra or mis-shaped weight is a
    BackendError."""
    import torch

    from rtfer.models import inference_state_keys

    path = Path(path)
    arch = getattr(model, "architecture", type(model).__name__)
    weights = read_onnx_weights(path)
    expected = inference_state_keys(model, input_size)
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing:
        raise BackendError(f"{path.name} lacks the weight {missing[0]} of {arch} ({len(missing)} missing)")
    if extra:
        raise BackendError(f"{path.name} has the weight {extra[0]} that {arch} does not use ({len(extra)} extra)")
    own = model.state_dict()
    for k in expected:
        if tuple(own[k].shape) != tuple(weights[k].shape):
            raise BackendError(f"{path.name}: {k} has shape {tuple(weights[k].shape)}, {arch} expects "
                               f"{tuple(own[k].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(weights[k])) for k in expected}, strict=False)


def onnx_num_outputs(path: str | Path) -> int | None:
    import onnx

    out = onnx.load(str(path), load_external_data=False).graph.output[0]
    dims = out.type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None


class TorchBackend(Backend):
    name = "torch"

    def load(self) -> None:
        try:
            import torch
        except ImportError:
            from rtfer.errors import missing_extra

            raise missing_extra("torch", "train") from None
        from rtfer.models import create_model, is_model

        self._torch = torch
        kind, index = parse_device(self.device)
        if kind == "cuda":
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                have = torch.cuda.device_count() if torch.cuda.is_available() else 0
                if not self.allow_fallback:
                    raise BackendError(f"torch backend: {self.device} is not available ({have} CUDA devices seen "
                                       "by torch); choose --device cpu")
                log.warning("torch backend: %s is not available, falling back to cpu", self.device)
                kind = "cpu"
        self.dev = torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
        self.cuda = kind == "cuda"
        self.half = self.cuda and self.precision != "fp32"  # --precision fp32 turns FP16 autocast off on CUDA

        arch = self.member.get("architecture")
        if not arch or not is_model(arch):
            raise BackendError(f"torch backend: member architecture {arch!r} is not a registered model")
        kwargs = dict(self.member.get("arch_kwargs", {}))
        kwargs.setdefault("input_size", self.input_size)
        num_classes = onnx_num_outputs(self.model_path) or NUM_CLASSES
        try:
            model = create_model(arch, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"torch backend: cannot build {arch} with {kwargs}: {exc}") from exc
        load_onnx_weights(model, self.model_path, self.input_size)
        model.eval()
        if self.cuda:
            model = model.to(self.dev, memory_format=torch.channels_last)
        self.model = model
        self.num_classes = num_classes
        self.buckets = bucket_sizes(self.max_batch)
        self._graphs: dict[int, tuple] = {}
        self.active_device = str(self.dev) + ((" (fp16, cuda graphs)" if self.half else " (fp32, cuda graphs)")
                                              if self.cuda else " (fp32)")
        log.info("torch backend: %s (%s) on %s", self.model_path.name, arch, self.active_device)

    # ---- inference ------------------------------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        if not self.cuda:
            torch = self._torch
            with torch.inference_mode():
                outs = [self.model(torch.from_numpy(chunk)).float().numpy() for chunk in self._chunks(batch)]
            return np.concatenate(outs).astype(np.float32, copy=False)
        outs = []
        for start, stop, bucket in plan_batches(len(batch), self.max_batch):
            outs.append(self._run_graph(batch[start:stop], bucket))
        return np.concatenate(outs)

    def _run_graph(self, chunk: np.ndarray, bucket: int) -> np.ndarray:
        torch = self._torch
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket)
        graph, static_in, static_out = self._graphs[bucket]
        n = len(chunk)
        with torch.cuda.device(self.dev), torch.no_grad():
            static_in[:n].copy_(torch.from_numpy(chunk).to(self.dev, non_blocking=False))
            if n < bucket:
                static_in[n:].zero_()
            graph.replay()
            return static_out[:n].float().cpu().numpy()

    def _capture(self, bucket: int):
        """Warm up on a side stream, then capture one forward pass for ``bucket`` rows (torch.cuda.graph docs)."""
        torch = self._torch
        s = self.input_size
        with torch.cuda.device(self.dev):
            static_in = torch.zeros((bucket, 3, s, s), device=self.dev).contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream(device=self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            # Autocast's weight cache must be off while capturing: cached casts would be freed after capture.
            with torch.cuda.stream(side), torch.no_grad(), \
                    torch.autocast("cuda", dtype=torch.float16, cache_enabled=False, enabled=self.half):
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, cache_enabled=False, enabled=self.half):
                with torch.cuda.graph(graph):
                    static_out = self.model(static_in)
            torch.cuda.synchronize(self.dev)
        log.debug("torch backend: captured a CUDA graph for batch %d", bucket)
        return graph, static_in, static_out
