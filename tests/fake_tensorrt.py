"""A recording stand-in for the ``tensorrt`` module, for testing engine building and running on CPU machines.

TensorRT cannot be installed here, so tests put ``make_fake_tensorrt()`` into ``sys.modules["tensorrt"]``. The fake
implements the small part of the TensorRT 10 Python API that rtfer uses, with the documented names: the ONNX
parser turns each ONNX node into one layer named as the real parser names it, the builder checks the optimisation
profile and precision flags and serialises a JSON "plan", and the execution context reads the input from the
addresses it was given (CPU pointers in tests) and writes deterministic logits
``logits[i, c] = (c + 1) * mean(input[i]) + c``. Every call is recorded in ``module.state``.
"""
from __future__ import annotations

import ctypes
import enum
import json
import types
from dataclasses import dataclass, field

import numpy as np

MAGIC = "fake-tensorrt-plan"
TIMING_MAGIC = b"FAKE-TIMING-CACHE"


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 7


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              7: DataType.INT64}


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 6
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class LayerType(enum.IntEnum):
    CONVOLUTION = 0
    ACTIVATION = 2
    POOLING = 3
    SCALE = 5
    SOFTMAX = 6
    ELEMENTWISE = 9
    UNARY = 11
    SHUFFLE = 13
    REDUCE = 17
    CONSTANT = 19
    MATRIX_MULTIPLY = 22
    SHAPE = 24
    CAST = 40
    NORMALIZATION = 41
    IDENTITY = 18


_LAYER_TYPE = {"Conv": LayerType.CONVOLUTION, "Relu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION,
               "GlobalAveragePool": LayerType.REDUCE, "MaxPool": LayerType.POOLING, "AveragePool": LayerType.POOLING,
               "BatchNormalization": LayerType.SCALE, "Softmax": LayerType.SOFTMAX, "Add": LayerType.ELEMENTWISE,
               "Sub": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE, "Div": LayerType.ELEMENTWISE,
               "Pow": LayerType.ELEMENTWISE, "Max": LayerType.ELEMENTWISE, "Sqrt": LayerType.UNARY,
               "Reciprocal": LayerType.UNARY, "Erf": LayerType.UNARY, "ReduceMean": LayerType.REDUCE,
               "ReduceSum": LayerType.REDUCE, "ReduceL2": LayerType.REDUCE, "Reshape": LayerType.SHUFFLE,
               "Transpose": LayerType.SHUFFLE, "Flatten": LayerType.SHUFFLE, "Gemm": LayerType.MATRIX_MULTIPLY,
               "MatMul": LayerType.MATRIX_MULTIPLY, "Shape": LayerType.SHAPE, "Cast": LayerType.CAST,
               "LayerNormalization": LayerType.NORMALIZATION, "Identity": LayerType.IDENTITY}


@dataclass
class FakeState:
    """What the fake saw: every call, built plans, layers timed (timing-cache misses), executed batch sizes."""

    calls: list[tuple] = field(default_factory=list)
    builds: int = 0
    layers_timed: int = 0
    executed_batches: list[int] = field(default_factory=list)
    last_network: object = None
    last_config: object = None


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:  # overridden by users
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = _Severity

    def __init__(self, min_severity=_Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class ITensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


class ILayer:
    def __init__(self, name: str, type_: LayerType, outputs: list[ITensor], op_type: str) -> None:
        self.name, self.type, self._outputs, self.op_type = name, type_, outputs, op_type
        self._precision = DataType.FLOAT
        self.precision_is_set = False
        self._output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    @property
    def precision(self) -> DataType:
        return self._precision

    @precision.setter
    def precision(self, value: DataType) -> None:
        self._precision, self.precision_is_set = DataType(value), True

    def set_output_type(self, index: int, dtype: DataType) -> None:
        if not 0 <= index < len(self._outputs):
            raise IndexError(f"layer {self.name} has no output {index}")
        self._output_types[index] = DataType(dtype)

    def get_output_type(self, index: int) -> DataType:
        return self._output_types.get(index, self._outputs[index].dtype)

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[ILayer] = []
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []

    def get_flag(self, flag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i: int) -> ILayer:
        return self.layers[i]

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self.outputs[i]


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple, tuple, tuple]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name: str):
        return list(self.shapes[name])


class ITimingCache:
    def __init__(self, entries: list[str]) -> None:
        self.entries = list(entries)

    def serialize(self) -> bytes:
        return TIMING_MAGIC + json.dumps(self.entries).encode()


class IBuilderConfig:
    def __init__(self, state: FakeState) -> None:
        self._state = state
        self.flags_set: set[BuilderFlag] = set()
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None

    def set_flag(self, flag) -> None:
        self._state.calls.append(("set_flag", BuilderFlag(flag).name))
        self.flags_set.add(BuilderFlag(flag))

    def get_flag(self, flag) -> bool:
        return BuilderFlag(flag) in self.flags_set

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pool_limits[MemoryPoolType(pool)] = int(size)

    def get_memory_pool_limit(self, pool) -> int:
        return self.pool_limits[MemoryPoolType(pool)]

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def create_timing_cache(self, serialized) -> ITimingCache:
        data = bytes(serialized)
        if not data:
            return ITimingCache([])
        if not data.startswith(TIMING_MAGIC):
            raise RuntimeError("invalid timing cache")
        return ITimingCache(json.loads(data[len(TIMING_MAGIC):]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class IParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


def _parse_onnx_into(network: INetworkDefinition, path: str) -> list[str]:
    """Fill ``network`` from an ONNX file; returns parser errors (empty on success)."""
    import onnx

    from rtfer.engines.precision import onnx_node_name

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(path))
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        return [f"failed to parse ONNX model: {exc}"]
    graph = model.graph
    types_by_name = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        types_by_name[vi.name] = vi.type.tensor_type

    def dims(tt) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)

    inits = {i.name for i in graph.initializer}
    for vi in graph.input:
        if vi.name not in inits:
            tt = vi.type.tensor_type
            network.inputs.append(ITensor(vi.name, _FROM_ONNX.get(tt.elem_type, DataType.FLOAT), dims(tt)))
    for node in graph.node:
        if node.op_type == "Constant":
            continue  # the real parser folds constants into weights
        outs = []
        for out in node.output:
            tt = types_by_name.get(out)
            dtype = _FROM_ONNX.get(tt.elem_type, DataType.FLOAT) if tt is not None else DataType.FLOAT
            outs.append(ITensor(out, dtype, dims(tt) if tt is not None else ()))
        network.layers.append(ILayer(onnx_node_name(node), _LAYER_TYPE.get(node.op_type, LayerType.IDENTITY), outs,
                                     node.op_type))
    for vi in graph.output:
        tt = vi.type.tensor_type
        network.outputs.append(ITensor(vi.name, _FROM_ONNX.get(tt.elem_type, DataType.FLOAT), dims(tt)))
    return []


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger) -> None:
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        self.errors = [IParserError(e) for e in _parse_onnx_into(self.network, path)]
        return not self.errors

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> IParserError:
        return self.errors[index]


class Builder:
    _state: FakeState
    platform_has_fast_fp16 = True

    def __init__(self, logger) -> None:
        if not isinstance(logger, ILogger):
            raise TypeError("Builder needs an ILogger")
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self._state.calls.append(("create_network", flags))
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self._state)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        self.logger.log(_Severity.ERROR, msg)
        return None

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        """Validate like TensorRT does (returning None on error) and return a JSON 'plan'."""
        state = self._state
        state.calls.append(("build_serialized_network",))
        state.last_network, state.last_config = network, config
        strongly = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if strongly and (BuilderFlag.FP16 in config.flags_set or any(lay.precision_is_set for lay in network.layers)):
            return self._error("strongly typed networks do not accept FP16 flags or layer precisions")
        if not network.outputs:
            return self._error("network has no outputs")
        dynamic = [t for t in network.inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            return self._error("dynamic inputs need an optimization profile")
        inputs = []
        for t in network.inputs:
            shapes = config.profiles[0].shapes.get(t.name) if config.profiles else (t.shape,) * 3
            if shapes is None:
                return self._error(f"profile has no shape for input {t.name}")
            lo, opt, hi = shapes
            for a, b, c, d in zip(lo, opt, hi, t.shape):
                if not a <= b <= c or (d != -1 and not a == c == d):
                    return self._error(f"invalid profile {shapes} for {t.name} {t.shape}")
            inputs.append({"name": t.name, "dtype": int(t.dtype), "shape": list(t.shape), "profile": shapes})
        cache = config.timing_cache or ITimingCache([])
        for layer in network.layers:
            if layer.name not in cache.entries:
                cache.entries.append(layer.name)
                state.layers_timed += 1
        config.timing_cache = cache
        state.builds += 1
        plan = {"magic": MAGIC, "inputs": inputs,
                "outputs": [{"name": t.name, "dtype": int(DataType.FLOAT), "shape": list(t.shape)}
                            for t in network.outputs],
                "fp16": BuilderFlag.FP16 in config.flags_set,
                "fp32_layers": [lay.name for lay in network.layers if lay.precision_is_set]}
        return json.dumps(plan).encode()


class ICudaEngine:
    def __init__(self, plan: dict, state: FakeState) -> None:
        self.plan, self._state = plan, state
        self._io = [(t, TensorIOMode.INPUT) for t in plan["inputs"]] + \
                   [(t, TensorIOMode.OUTPUT) for t in plan["outputs"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]["name"]

    def _find(self, name: str):
        for t, mode in self._io:
            if t["name"] == name:
                return t, mode
        raise KeyError(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._find(name)[0]["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._find(name)[0]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [tuple(s) for s in self._find(name)[0]["profile"]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        t, mode = self.engine._find(name)
        lo, _, hi = t["profile"]
        shape = tuple(int(s) for s in shape)
        if mode != TensorIOMode.INPUT or len(shape) != len(lo) or \
                any(not a <= s <= c for a, s, c in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        t, mode = self.engine._find(name)
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, tuple(t["shape"]))
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        return (batch, *t["shape"][1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.engine._find(name)
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        inp = self.engine.plan["inputs"][0]
        out = self.engine.plan["outputs"][0]
        if inp["name"] not in self.shapes or set(self.addresses) != {t["name"] for t, _ in self.engine._io}:
            return False
        shape = self.shapes[inp["name"]]
        x = _view(self.addresses[inp["name"]], shape, np.float32)
        classes = out["shape"][-1]
        y = _view(self.addresses[out["name"]], (shape[0], classes), np.float32)
        means = x.reshape(shape[0], -1).mean(axis=1, dtype=np.float64)
        y[...] = (means[:, None] * np.arange(1, classes + 1) + np.arange(classes)).astype(np.float32)
        self.engine._state.executed_batches.append(shape[0])
        return True


def _view(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    count = int(np.prod(shape))
    ctype = {np.float32: ctypes.c_float, np.float16: ctypes.c_uint16}[dtype]
    return np.ctypeslib.as_array((ctype * count).from_address(address)).view(dtype).reshape(shape)


class Runtime:
    _state: FakeState

    def __init__(self, logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data) -> ICudaEngine | None:
        self._state.calls.append(("deserialize_cuda_engine",))
        try:
            plan = json.loads(bytes(data))
            if plan.get("magic") != MAGIC:
                raise ValueError("not a plan")
        except (ValueError, UnicodeDecodeError, AttributeError):
            self.logger.log(_Severity.ERROR, "deserialization failed: magic tag does not match")
            return None
        return ICudaEngine(plan, self._state)


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module with its own :class:`FakeState` (``module.state``)."""
    state = FakeState()
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.state = state
    mod.DataType = DataType
    mod.float32, mod.float16, mod.int8, mod.int32, mod.int64, mod.bool = (
        DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.INT64, DataType.BOOL)
    mod.nptype = lambda dt: _NP[DataType(dt)]
    for obj in (NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, LayerType, ILogger, Logger,
                ITensor, ILayer, INetworkDefinition, IOptimizationProfile, ITimingCache, IBuilderConfig, OnnxParser,
                ICudaEngine, IExecutionContext):
        setattr(mod, obj.__name__, obj)
    mod.Builder = type("Builder", (Builder,), {"_state": state})
    mod.Runtime = type("Runtime", (Runtime,), {"_state": state})
    return mod


def write_test_onnx(path, input_size: int = 8, classes: int = 7, seed: int = 0):
    """A small real ONNX classifier shaped like a bundle member, with the patterns the FP32 policy must find.

    input "input" (batch, 3, S, S) float32 -> Conv (float16 weights + Cast, as bundles store them) -> a LayerNorm
    decomposed into ReduceMean/Sub/Pow/Sqrt/Div under a scope *not* named "norm" (found by structure; its Sqrt node
    is unnamed) -> a GRN under ".../grn/" -> residual Add -> a BatchNormalization named ".../batchnorm/..." and a
    plain Div (both must stay FP16) -> pool -> Gemm -> "logits" (batch, classes). Returns (path, expected FP32 node
    names).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = 4
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (c, 3, 3, 3)).astype(np.float16), "conv_w16"),
             numpy_helper.from_array(rng.normal(0, 0.5, (classes, c)).astype(np.float16), "fc_w16"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.ones((1, c, 1, 1), np.float32), "gamma"),
             numpy_helper.from_array(np.zeros((1, c, 1, 1), np.float32), "beta"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
             numpy_helper.from_array(np.ones(c, np.float32), "bn_scale"),
             numpy_helper.from_array(np.zeros(c, np.float32), "bn_bias"),
             numpy_helper.from_array(np.zeros(c, np.float32), "bn_mean"),
             numpy_helper.from_array(np.ones(c, np.float32), "bn_var")]
    ln, grn = "/stages.0/blocks.0/ln", "/stages.0/blocks.0/mlp/grn"
    n = helper.make_node
    nodes = [
        n("Cast", ["conv_w16"], ["conv_w"], name="/stem/Cast", to=TensorProto.FLOAT),
        n("Conv", ["input", "conv_w"], ["x0"], name="/stem/Conv", pads=[1, 1, 1, 1]),
        # LayerNorm over channels, decomposed (structure rule)
        n("ReduceMean", ["x0"], ["ln_mean"], name=f"{ln}/ReduceMean", axes=[1], keepdims=1),
        n("Sub", ["x0", "ln_mean"], ["ln_d"], name=f"{ln}/Sub"),
        n("Pow", ["ln_d", "two"], ["ln_sq"], name=f"{ln}/Pow"),
        n("ReduceMean", ["ln_sq"], ["ln_var"], name=f"{ln}/ReduceMean_1", axes=[1], keepdims=1),
        n("Add", ["ln_var", "eps"], ["ln_ve"], name=f"{ln}/Add"),
        n("Sqrt", ["ln_ve"], ["ln_std"]),  # unnamed: the parser calls its layer node_of_ln_std
        n("Div", ["ln_d", "ln_std"], ["ln_n"], name=f"{ln}/Div"),
        n("Mul", ["ln_n", "gamma"], ["ln_g"], name=f"{ln}/Mul"),
        n("Add", ["ln_g", "beta"], ["x1"], name=f"{ln}/Add_1"),
        # GRN: sum of squares over H, W (structure rule) plus its scale/shift (name rule)
        n("Pow", ["x1", "two"], ["g_sq"], name=f"{grn}/Pow"),
        n("ReduceSum", ["g_sq", "hw_axes"], ["g_ss"], name=f"{grn}/ReduceSum", keepdims=1),
        n("Sqrt", ["g_ss"], ["g_x"], name=f"{grn}/Sqrt"),
        n("ReduceMean", ["g_x"], ["g_mean"], name=f"{grn}/ReduceMean", axes=[1], keepdims=1),
        n("Add", ["g_mean", "eps"], ["g_me"], name=f"{grn}/Add"),
        n("Div", ["g_x", "g_me"], ["g_n"], name=f"{grn}/Div"),
        n("Mul", ["x1", "g_n"], ["g_xn"], name=f"{grn}/Mul"),
        n("Mul", ["g_xn", "gamma"], ["g_s"], name=f"{grn}/Mul_1"),
        n("Add", ["g_s", "beta"], ["g_out"], name=f"{grn}/Add_1"),
        n("Add", ["g_out", "x0"], ["x2"], name="/stages.0/blocks.0/Add"),
        # must stay FP16: a BatchNorm whose name contains "norm", and a plain division
        n("BatchNormalization", ["x2", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["x3"],
          name="/head/batchnorm/BatchNormalization"),
        n("Div", ["x3", "two"], ["x4"], name="/head/Div"),
        n("Relu", ["x4"], ["x5"], name="/head/Relu"),
        n("GlobalAveragePool", ["x5"], ["pooled"], name="/head/GlobalAveragePool"),
        n("Flatten", ["pooled"], ["flat"], name="/head/Flatten"),
        n("Cast", ["fc_w16"], ["fc_w"], name="/head/fc/Cast", to=TensorProto.FLOAT),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="/head/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    expected = {f"{ln}/ReduceMean", f"{ln}/Sub", f"{ln}/Pow", f"{ln}/ReduceMean_1", f"{ln}/Add", "node_of_ln_std",
                f"{ln}/Div", f"{grn}/Pow", f"{grn}/ReduceSum", f"{grn}/Sqrt", f"{grn}/ReduceMean", f"{grn}/Add",
                f"{grn}/Div", f"{grn}/Mul", f"{grn}/Mul_1", f"{grn}/Add_1"}
    return path, expected
