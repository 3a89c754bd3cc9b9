"""Backend and device selection: ``auto`` choices and the GPU fallback (one warning, fastest CPU backend)."""
from __future__ import annotations

import logging

import pytest

from rtfer import backends


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda backend="auto": False)


def test_auto_on_cpu_picks_onnxruntime(no_gpu):
    assert backends.resolve("auto", "auto") == ("onnxruntime", "cpu")
    assert backends.resolve("auto", "cpu") == ("onnxruntime", "cpu")


def test_missing_gpu_with_fallback_lands_on_the_fastest_cpu_backend_with_one_warning(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="rtfer.backends"):
        assert backends.resolve("auto", "cuda", allow_fallback=True) == ("onnxruntime", "cpu")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert backends.resolve("tensorrt", "cuda:1", allow_fallback=True) == ("onnxruntime", "cpu")
    # an explicit CPU-capable backend is kept, on the CPU
    assert backends.resolve("torch", "cuda", allow_fallback=True) == ("torch", "cpu")


def test_missing_gpu_without_fallback_is_left_for_the_backend_to_refuse(no_gpu):
    assert backends.resolve("onnxruntime", "cuda:0") == ("onnxruntime", "cuda:0")


def test_bundle_with_fallback_runs_on_onnxruntime_cpu(no_gpu, tiny_bundle, caplog):
    import rtfer

    with caplog.at_level(logging.WARNING):
        bundle = rtfer.load_bundle(tiny_bundle, backend="auto", device="cuda", allow_fallback=True)
    assert (bundle.backend_name, bundle.device) == ("onnxruntime", "cpu")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_one_device_parser():
    from rtfer.backends.onnxruntime import select_providers
    from rtfer.backends.tensorrt import parse_cuda_index
    from rtfer.backends.torch import parse_device as torch_device
    from rtfer.devices import Device, parse_device
    from rtfer.errors import BackendError

    assert parse_device("cuda:1") == Device("cuda", 1) and str(parse_device("gpu:2")) == "cuda:2"
    assert parse_device("cpu") == Device("cpu") and not parse_device("CPU").is_gpu
    assert parse_device("tensorrt") == Device("tensorrt", 0)
    for bad in ("cuda:x", "cpu:0", "gpu2", "npu", ""):
        with pytest.raises(BackendError, match="unknown device"):
            parse_device(bad)
    # every consumer reads the same value
    assert torch_device("cuda:3") == ("cuda", 3) and parse_cuda_index("cuda:3") == 3 and parse_cuda_index("cpu") is None
    assert select_providers("cuda:3", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    with pytest.raises(BackendError):
        backends.resolve("auto", "cuda:x")


@pytest.fixture
def machine(monkeypatch):
    """A machine whose SDKs and GPU reach are set per test: ``machine(installed, torch_cuda, ort_cuda)``."""

    def set_up(installed=("onnxruntime", "torch", "tensorrt"), torch_cuda=False, ort_cuda=False):
        monkeypatch.setattr(backends, "_has", lambda module: module in installed)
        monkeypatch.setattr(backends, "_torch_cuda", lambda: torch_cuda and "torch" in installed)
        monkeypatch.setattr(backends, "_ort_cuda", lambda: ort_cuda and "onnxruntime" in installed)

    return set_up


def test_auto_device_is_resolved_for_the_backend_asked(machine):
    """A GPU machine with the CPU-only onnxruntime wheel: onnxruntime runs on the CPU, torch on the GPU."""
    machine(torch_cuda=True, ort_cuda=False)
    assert backends.resolve("onnxruntime", "auto") == ("onnxruntime", "cpu")
    assert backends.resolve("torch", "auto") == ("torch", "cuda")
    assert backends.resolve("tensorrt", "auto") == ("tensorrt", "cuda")
    assert backends.resolve("auto", "auto") == ("tensorrt", "cuda")
    # an explicit GPU request is honoured, or refused by the backend; with --allow-fallback it moves to the CPU
    assert backends.resolve("onnxruntime", "cuda:1") == ("onnxruntime", "cuda:1")
    assert backends.resolve("onnxruntime", "cuda:1", allow_fallback=True) == ("onnxruntime", "cpu")
    assert backends.resolve("torch", "cuda:1", allow_fallback=True) == ("torch", "cuda:1")


def test_auto_backend_on_cuda_takes_one_that_reaches_the_gpu(machine):
    # onnxruntime-gpu only (torch installed but CPU-only): TensorRT and torch cannot reach the GPU, onnxruntime can
    machine(torch_cuda=False, ort_cuda=True)
    assert backends.resolve("auto", "auto") == ("onnxruntime", "cuda")
    assert backends.resolve("auto", "cuda:1") == ("onnxruntime", "cuda:1")
    assert backends.resolve("torch", "auto") == ("torch", "cpu")
    # no torch at all
    machine(installed=("onnxruntime",), ort_cuda=True)
    assert backends.resolve("auto", "auto") == ("onnxruntime", "cuda")
    # no GPU reachable: auto is the CPU, and an explicit cuda request goes to the first backend, which refuses it
    machine(torch_cuda=False, ort_cuda=False)
    assert backends.resolve("auto", "auto") == ("onnxruntime", "cpu")
    assert backends.resolve("auto", "cuda") == ("tensorrt", "cuda")


def test_cuda_available_per_backend(machine):
    machine(torch_cuda=True, ort_cuda=False)
    assert backends.cuda_available() and backends.cuda_available("torch") and backends.cuda_available("tensorrt")
    assert not backends.cuda_available("onnxruntime")


def test_classifier_sessions_take_every_core_and_the_detector_half(tiny_bundle, monkeypatch):
    """Without $RTFER_ORT_THREADS: classifier members get every core, the detector half (batch workers set the
    variable so that N processes share the cores, and then it rules both)."""
    import os

    import rtfer
    from rtfer.backends import onnxruntime as ortb
    from rtfer.detection import create_detector

    monkeypatch.delenv("RTFER_ORT_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert (ortb.classifier_threads(), ortb.default_threads()) == (4, 2)
    bundle = rtfer.load_bundle(tiny_bundle, backend="onnxruntime", device="cpu")
    assert {b.session.get_session_options().intra_op_num_threads for b in bundle.backends} == {4}
    detector = create_detector("centerface")
    assert detector.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("RTFER_ORT_THREADS", "1")
    assert (ortb.classifier_threads(), ortb.default_threads()) == (1, 1)
