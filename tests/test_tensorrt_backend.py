"""rtfer.backends.tensorrt against the fake tensorrt module, with host memory standing in for CUDA buffers.

The fake engine computes ``logits[i, c] = (c + 1) * mean(x[i]) + c`` from the buffer addresses it is given, so these
tests check the real copy-in / shape / address / execute / copy-out path, batch splitting and error handling.
"""
from __future__ import annotations

import contextlib
import json
import sys

import numpy as np
import pytest

import rtfer.backends.tensorrt as trt_backend
from fake_tensorrt import make_fake_tensorrt, write_test_onnx
from rtfer.backends import create_backend
from rtfer.errors import BackendError

MEMBER = {"name": "tiny", "input_size": 8}


class HostCuda(trt_backend.TorchCuda):
    """One pretend GPU whose buffers live in host memory (the fake engine reads and writes them by address)."""

    class _Stream:
        cuda_stream = 0

        def synchronize(self) -> None:
            pass

    def device_count(self) -> int:
        return 1

    def gpu_name(self, index: int) -> str:
        return "NVIDIA Fake GPU"

    def capability(self, index: int) -> tuple[int, int]:
        return (8, 9)

    def scope(self, index: int):
        return contextlib.nullcontext()

    def device(self, index: int):
        return self.torch.device("cpu")

    def stream(self, device):
        return self._Stream()

    def stream_scope(self, stream):
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return write_test_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")[0]


@pytest.fixture()
def trt(monkeypatch, tmp_path):
    fake = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setenv("RTFER_ENGINE_CACHE", str(tmp_path / "engines"))
    return fake


@pytest.fixture()
def gpu(monkeypatch):
    monkeypatch.setattr(trt_backend, "TorchCuda", HostCuda)


def expected_logits(x: np.ndarray, classes: int = 7) -> np.ndarray:
    m = x.reshape(len(x), -1).mean(axis=1, dtype=np.float64)
    return (m[:, None] * np.arange(1, classes + 1) + np.arange(classes)).astype(np.float32)


def test_runs_through_the_engine_and_splits_batches(trt, gpu, onnx_path):
    backend = create_backend("tensorrt", onnx_path, device="cuda", member=MEMBER, max_batch=4)
    assert backend.describe() == "tensorrt on cuda:0 (fp16 engine)"
    profile = trt.state.last_config.profiles[0].get_shape("input")
    assert profile == [(1, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8)]
    x = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32)
    out = backend.infer(x)
    assert out.dtype == np.float32 and out.shape == (10, 7)
    np.testing.assert_allclose(out, expected_logits(x), rtol=1e-5, atol=1e-5)
    assert trt.state.executed_batches == [4, 4, 2]
    assert backend.infer(x[:0]).shape == (0, 7)
    backend.warmup((1, 3))
    assert trt.state.executed_batches[-2:] == [1, 3]
    with pytest.raises(ValueError, match=r"expected a \(n, 3, 8, 8\) batch"):
        backend.infer(np.zeros((2, 3, 16, 16), np.float32))


def test_second_load_uses_the_cached_engine(trt, gpu, onnx_path):
    create_backend("tensorrt", onnx_path, device="cuda:0", member=MEMBER)
    create_backend("tensorrt", onnx_path, device="cuda:0", member=MEMBER)
    assert trt.state.builds == 1
    assert [c[0] for c in trt.state.calls].count("deserialize_cuda_engine") == 2


def test_undeserializable_engine_is_rebuilt(trt, gpu, onnx_path, tmp_path):
    first = create_backend("tensorrt", onnx_path, device="cuda", member=MEMBER)
    # An entry that passes the cache's checksum but that this TensorRT refuses (e.g. written by another build).
    first.engine_path.write_bytes(b"plan from another TensorRT")
    meta_path = first.engine_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    import hashlib

    meta["engine_sha256"] = hashlib.sha256(b"plan from another TensorRT").hexdigest()
    meta_path.write_text(json.dumps(meta))
    again = create_backend("tensorrt", onnx_path, device="cuda", member=MEMBER)
    assert trt.state.builds == 2
    x = np.ones((2, 3, 8, 8), np.float32)
    np.testing.assert_allclose(again.infer(x), expected_logits(x), rtol=1e-6)


def test_missing_tensorrt_is_a_one_line_backend_error(monkeypatch, onnx_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError) as info:
        create_backend("tensorrt", onnx_path, device="cuda", member=MEMBER)
    assert str(info.value) == ("TensorRT is not installed: pip install 'rtfer[trt]' "
                               "(or use --backend onnxruntime/torch)")


@pytest.mark.parametrize("device, message", [("cuda", "torch sees none"), ("cpu", "CUDA devices only")])
def test_no_cuda_device_is_a_one_line_backend_error(trt, onnx_path, device, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(BackendError, match=message) as info:
        create_backend("tensorrt", onnx_path, device=device, member=MEMBER)
    assert "\n" not in str(info.value)
    assert trt.state.builds == 0


def test_missing_device_index(trt, gpu, onnx_path):
    with pytest.raises(BackendError, match=r"no CUDA device 3 \(found 1\)"):
        create_backend("tensorrt", onnx_path, device="cuda:3", member=MEMBER)
    with pytest.raises(BackendError, match="bad device"):
        create_backend("tensorrt", onnx_path, device="cuda:x", member=MEMBER)


def test_fallback_runs_onnxruntime_on_cpu_only_when_asked(trt, onnx_path, caplog):
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    backend = create_backend("tensorrt", onnx_path, device="cuda", member=MEMBER, allow_fallback=True)
    assert "onnxruntime fallback" in backend.describe() and "falling back" in caplog.text
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(backend.infer(x), ref, rtol=1e-5, atol=1e-6)
    assert trt.state.builds == 0


def test_build_failure_is_a_backend_error(monkeypatch, gpu, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("11.1.0"))
    monkeypatch.setenv("RTFER_ENGINE_CACHE", str(tmp_path / "engines"))
    path = write_test_onnx(tmp_path / "m.onnx")[0]
    with pytest.raises(BackendError, match="^tensorrt: TensorRT 11.1.0 builds strongly typed networks only"):
        create_backend("tensorrt", path, device="cuda", member=MEMBER)
    monkeypatch.setenv("RTFER_TRT_PRECISION", "fp32")
    backend = create_backend("tensorrt", path, device="cuda", member=MEMBER)
    assert backend.describe() == "tensorrt on cuda:0 (fp32 engine)"
