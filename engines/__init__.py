"""TensorRT engine building and caching (a leaf package: it imports nothing else from rtfer).

``build_engine(onnx_path, input_size=..., ...)`` returns the path of a cached ``.engine`` for the current GPU,
building it on a miss. TensorRT is imported only when an engine is built.
"""
from __future__ import annotations

from rtfer.engines.builder import EngineBuildError, build_engine, detect_gpu, import_tensorrt
from rtfer.engines.cache import EngineCache, EngineSpec, GpuInfo, default_cache_dir
from rtfer.engines.precision import DEFAULT_FP32_POLICY, NO_FP32_POLICY, Fp32Policy, fp32_node_names

__all__ = ["DEFAULT_FP32_POLICY", "NO_FP32_POLICY", "EngineBuildError", "EngineCache", "EngineSpec", "Fp32Policy",
           "GpuInfo", "build_engine", "default_cache_dir", "detect_gpu", "fp32_node_names", "import_tensorrt"]
