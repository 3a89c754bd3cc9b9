"""Which layers of an FP16 engine must stay in FP32.

ConvNeXt-V2's LayerNorm and GRN (global response normalisation) compute sums of squares over channels or the whole
feature map; in FP16 these overflow (65504) and the engine returns NaN/garbage logits. The policy finds those
layers in the ONNX graph, by structure (a square -> reduce -> add/sqrt/div chain, as LayerNorm and GRN decompose)
and by name (ops of normalisation kinds inside modules named "...norm..." or "...grn..."), and returns ONNX node
names. ``mark_fp32_layers`` then pins the matching TensorRT layers to FP32 (used with
``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``); everything else may run in FP16.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Op types that appear inside a decomposed LayerNorm / GRN (the only ops the name rule may pin).
NORM_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "Sub", "Pow", "Sqrt", "Div",
                      "Reciprocal", "Add", "Mul", "LayerNormalization", "Max", "Clip"})
_REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum"})
_SELF_REDUCING = frozenset({"ReduceL2", "ReduceSumSquare"})  # square + reduce in one op
_PASS_THROUGH = frozenset({"Add", "Sqrt", "Reciprocal", "ReduceMean", "Max", "Clip"})  # eps, root, mean of norms
_TERMINAL = frozenset({"Div", "Mul"})  # the normalising division / multiply by rsqrt


@dataclass(frozen=True)
class Fp32Policy:
    """How to choose FP32 layers. ``names`` pins extra ONNX node / TensorRT layer names exactly."""

    name_patterns: tuple[str, ...] = ("norm", "grn")
    structural: bool = True
    names: tuple[str, ...] = ()
    enabled: bool = True

    def fingerprint(self) -> str:
        if not self.enabled:
            return "none"
        return f"patterns={','.join(self.name_patterns)};structural={int(self.structural)};" \
               f"names={','.join(sorted(self.names))}"


DEFAULT_FP32_POLICY = Fp32Policy()
NO_FP32_POLICY = Fp32Policy(enabled=False)


def as_policy(value: Fp32Policy | list[str] | tuple[str, ...] | None) -> Fp32Policy:
    """Accept a policy, a list of exact layer names (added to the default rules), or None (no FP32 pins)."""
    if value is None:
        return NO_FP32_POLICY
    if isinstance(value, Fp32Policy):
        return value
    return Fp32Policy(names=tuple(str(v) for v in value))


def onnx_node_name(node) -> str:
    """The name TensorRT's ONNX parser gives a node's layer (it uses ``node_of_<first output>`` for unnamed nodes)."""
    if not node.name and len(node.output):
        return f"node_of_{node.output[0]}"
    return node.name


def _is_square(node, constants: dict[str, float]) -> bool:
    if node.op_type == "Pow":
        return len(node.input) > 1 and constants.get(node.input[1]) == 2.0
    return node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]


def _scalar_constants(graph) -> dict[str, float]:
    """Scalar float constants (initializers and Constant nodes), used to recognise ``Pow(x, 2)``."""
    from onnx import numpy_helper

    out: dict[str, float] = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size == 1:
            out[init.name] = float(arr.reshape(-1)[0])
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arr = numpy_helper.to_array(attr.t)
                    if arr.size == 1:
                        out[node.output[0]] = float(arr.reshape(-1)[0])
                elif attr.name == "value_float":
                    out[node.output[0]] = float(attr.f)
    # Cast(constant) keeps the value (weights are stored as fp16 initializers followed by Cast-to-float).
    for node in graph.node:
        if node.op_type == "Cast" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def fp32_node_names(model, policy: Fp32Policy = DEFAULT_FP32_POLICY) -> set[str]:
    """ONNX node names (as the TensorRT parser names their layers) that the policy keeps in FP32."""
    if not policy.enabled:
        return set()
    graph = model.graph
    nodes = list(graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in nodes:
        for inp in n.input:
            consumers[inp].append(n)
    constants = _scalar_constants(graph)
    marked: set[str] = set(policy.names)

    # 1. Name rule: normalisation-kind ops inside modules whose names mention a pattern.
    patterns = [p.lower() for p in policy.name_patterns]
    for n in nodes:
        name = onnx_node_name(n)
        if n.op_type in NORM_OPS and any(p in name.lower() for p in patterns):
            marked.add(name)
        if n.op_type == "LayerNormalization":
            marked.add(name)

    # 2. Structure rule: square -> reduce (a variance or squared norm), plus what feeds and follows it.
    if policy.structural:
        seeds = []
        for n in nodes:
            if n.op_type in _SELF_REDUCING:
                seeds.append(n)
            elif n.op_type in _REDUCE_OPS and n.input and n.input[0] in producer \
                    and _is_square(producer[n.input[0]], constants):
                sq = producer[n.input[0]]
                marked.update({onnx_node_name(n), onnx_node_name(sq)})
                seeds.append(n)
                # LayerNorm: the square's input is x - mean(x); pin the Sub and the mean too.
                centred = producer.get(sq.input[0])
                if centred is not None and centred.op_type == "Sub":
                    marked.add(onnx_node_name(centred))
                    mean = producer.get(centred.input[1]) if len(centred.input) > 1 else None
                    if mean is not None and mean.op_type == "ReduceMean":
                        marked.add(onnx_node_name(mean))
        for seed in seeds:
            marked.add(onnx_node_name(seed))
            frontier = [seed]
            while frontier:
                cur = frontier.pop()
                for out in cur.output:
                    for nxt in consumers.get(out, []):
                        name = onnx_node_name(nxt)
                        if name in marked:
                            continue
                        if nxt.op_type in _TERMINAL:
                            marked.add(name)
                        elif nxt.op_type in _PASS_THROUGH:
                            marked.add(name)
                            frontier.append(nxt)
    return marked


_SUFFIX = re.compile(r"^(.*)_(\d+)$")


@dataclass
class MarkResult:
    """What ``mark_fp32_layers`` pinned, for logging and tests."""

    layers: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def mark_fp32_layers(trt, network, node_names: set[str], all_node_names: set[str]) -> MarkResult:
    """Pin the TensorRT layers that come from ``node_names`` (and every normalisation layer) to FP32.

    The parser names a node's layer after the node, uniquifying extra layers of the same node with ``_<n>``;
    such a suffixed name counts only when it is not itself another ONNX node's name. Layers whose outputs are
    not floating point (shape arithmetic) are left alone.
    """
    result = MarkResult()
    float_types = {trt.float32, trt.float16}
    seen: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        name = layer.name
        base = name
        m = _SUFFIX.match(name)
        if name not in node_names and m and name not in all_node_names:
            base = m.group(1)
        wanted = base in node_names or layer.type == trt.LayerType.NORMALIZATION
        if not wanted:
            continue
        if any(layer.get_output(j).dtype not in float_types for j in range(layer.num_outputs)):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        result.layers.append(name)
        seen.add(base)
    result.unmatched = sorted(node_names - seen)
    return result
