"""Build TensorRT engines from ONNX files (dynamic batch profile, FP16 with FP32 pins), through the cache.

Written against the TensorRT 10 Python API. FP16 uses a weakly typed network with ``BuilderFlag.FP16`` and layer
precision constraints; TensorRT 11 removed weak typing, so an FP16 build there fails with a clear message (the
ONNX graph is FP32 and would have to be retyped first). FP32 builds use a strongly typed network.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

from rtfer.engines.cache import EngineCache, EngineSpec, GpuInfo, sha256_file
from rtfer.engines.precision import DEFAULT_FP32_POLICY, Fp32Policy, as_policy, fp32_node_names, \
    mark_fp32_layers, onnx_node_name

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
INSTALL_HINT = "pip install 'rtfer[trt]'"


class EngineBuildError(RuntimeError):
    """An engine could not be built (TensorRT missing, ONNX unparsable, builder failure, bad arguments)."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineBuildError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return trt


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def detect_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (via torch, else nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available() and device < torch.cuda.device_count():
            return GpuInfo(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device}"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.strip()
            name, cap = (s.strip() for s in out.splitlines()[0].rsplit(",", 1))
            major, minor = cap.split(".")
            return GpuInfo(name, (int(major), int(minor)))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    raise EngineBuildError(f"no CUDA device {device} found (TensorRT engines are built on the GPU that runs them)")


def make_logger(trt):
    """A TensorRT logger that forwards to Python logging instead of printing."""
    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG,
              trt.ILogger.Severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Logger()


def _check_args(precision: str, input_size: int, min_batch: int, opt_batch: int, max_batch: int) -> None:
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if input_size <= 0:
        raise EngineBuildError(f"input_size must be positive, got {input_size}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise EngineBuildError(f"batch profile needs 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")


def profile_shapes(input_shape, input_size: int, min_batch: int, opt_batch: int, max_batch: int):
    """(min, opt, max) shapes for an NCHW input whose batch (and maybe spatial) axes are dynamic (-1)."""
    shape = [int(d) for d in input_shape]
    if len(shape) != 4:
        raise EngineBuildError(f"expected an NCHW input, got shape {shape}")
    chw = [shape[1] if shape[1] > 0 else 3] + [d if d > 0 else input_size for d in shape[2:]]
    if chw[1:] != [input_size, input_size]:
        raise EngineBuildError(f"ONNX input is {chw[1]}x{chw[2]} but input_size is {input_size}")
    if shape[0] > 0 and not min_batch == max_batch == shape[0]:
        raise EngineBuildError(f"ONNX input has a fixed batch of {shape[0]}; export it with a dynamic 'batch' axis")
    return tuple((b, *chw) for b in (min_batch, opt_batch, max_batch))


def _serialize(host_memory) -> bytes:
    return bytes(memoryview(host_memory))


def build_serialized(trt, onnx_path: Path, spec: EngineSpec, *, workspace_gb: float, policy: Fp32Policy,
                     timing_cache: bytes = b"") -> tuple[bytes, bytes]:
    """Parse ``onnx_path`` and build a plan for ``spec``. Returns (engine bytes, updated timing cache bytes)."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    fp16 = spec.precision == "fp16"
    if fp16 and trt_major(trt) >= 11:
        raise EngineBuildError(f"TensorRT {trt.__version__} builds strongly typed networks only, and the bundle's "
                               "ONNX graphs are FP32: use tensorrt 10.x for FP16 engines or precision='fp32'")
    flags = 0 if fp16 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {errors or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; the FP16 engine may be slower than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        wanted = fp32_node_names(model, policy)
        if wanted:
            marked = mark_fp32_layers(trt, network, wanted, {onnx_node_name(n) for n in model.graph.node})
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            log.info("%s: %d layers pinned to FP32 (%d policy nodes had no layer)", onnx_path.name,
                     len(marked.layers), len(marked.unmatched))

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = profile_shapes(tensor.shape, spec.input_size, spec.min_batch, spec.opt_batch, spec.max_batch)
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache:
        try:
            cache = config.create_timing_cache(timing_cache)
        except Exception as exc:  # TensorRT raises its own types for foreign/corrupt caches
            log.warning("ignoring unreadable timing cache (%s)", exc)
    if cache is None:
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build an engine for {onnx_path.name} (see the TensorRT log)")
    return _serialize(plan), _serialize(config.get_timing_cache().serialize())


def engine_spec(trt, onnx_path: Path, *, input_size: int, precision: str, min_batch: int, opt_batch: int,
                max_batch: int, policy: Fp32Policy, gpu: GpuInfo) -> EngineSpec:
    return EngineSpec(onnx_sha256=sha256_file(onnx_path), precision=precision, min_batch=int(min_batch),
                      opt_batch=int(opt_batch), max_batch=int(max_batch), input_size=int(input_size),
                      gpu_name=gpu.name, compute_capability=tuple(gpu.compute_capability),
                      trt_version=str(trt.__version__),
                      fp32_policy=policy.fingerprint() if precision == "fp16" else "")


def build_engine(onnx_path: str | Path, *, input_size: int, precision: str = "fp16", min_batch: int = 1,
                 opt_batch: int = 8, max_batch: int = 64, workspace_gb: float = 2.0,
                 fp32_layers: Fp32Policy | list[str] | tuple[str, ...] | None = DEFAULT_FP32_POLICY,
                 cache: EngineCache | str | Path | None = None, gpu: GpuInfo | None = None, device: int = 0,
                 force: bool = False) -> Path:
    """Return the cached engine for this ONNX file and profile, building it (on the current CUDA device) on a miss.

    ``fp32_layers``: an :class:`Fp32Policy`, a list of extra layer names to pin (on top of the default rules), or
    None for no pins. ``force`` rebuilds even on a hit (e.g. after TensorRT refused to deserialize the entry).
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file not found: {onnx_path}")
    opt_batch = min(opt_batch, max_batch)
    _check_args(precision, input_size, min_batch, opt_batch, max_batch)
    cache = cache if isinstance(cache, EngineCache) else EngineCache(cache)
    policy = as_policy(fp32_layers)
    gpu = gpu or detect_gpu(device)
    spec = engine_spec(trt, onnx_path, input_size=input_size, precision=precision, min_batch=min_batch,
                       opt_batch=opt_batch, max_batch=max_batch, policy=policy, gpu=gpu)
    if force:
        cache.invalidate(spec)
    else:
        hit = cache.lookup(spec)
        if hit is not None:
            log.info("engine cache hit for %s: %s", onnx_path.name, hit)
            return hit
    log.info("building a %s TensorRT engine for %s (batch %d/%d/%d, %dx%d) on %s; this takes a few minutes once",
             precision, onnx_path.name, min_batch, opt_batch, max_batch, input_size, input_size, gpu.name)
    t0 = time.perf_counter()
    plan, timing = build_serialized(trt, onnx_path, spec, workspace_gb=workspace_gb, policy=policy,
                                    timing_cache=cache.load_timing_cache(gpu, spec.trt_version))
    build_s = time.perf_counter() - t0
    cache.save_timing_cache(gpu, spec.trt_version, timing)
    path = cache.store(spec, plan, source=str(onnx_path.resolve()), build_s=build_s)
    log.info("built %s in %.1f s -> %s", onnx_path.name, build_s, path)
    return path
