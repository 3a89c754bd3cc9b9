"""Member heads and embeddings: the final Gemm of each member's ONNX graph (:func:`find_head`) and the members'
embeddings and probabilities on the examples (:func:`member_features`), read from an in-memory copy of the graph."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from rtfer.bundle import BundleSpec, MemberSpec, preprocess
from rtfer.labels import NUM_CLASSES

log = logging.getLogger(__name__)


@dataclass
class Head:
    """A member's last layer, the final Gemm: logits = alpha * emb @ B' + beta * C, as effective (7, D) weights and
    (7,) bias, with where they live in the ONNX graph."""

    weight: np.ndarray  # (7, D) effective
    bias: np.ndarray  # (7,) effective
    weight_init: str
    bias_init: str
    trans_b: bool
    alpha: float
    beta: float
    embedding: str  # the Gemm's input tensor


def _initializer_source(graph, name: str):
    """The initializer that feeds tensor ``name`` directly or through one Cast (FP16-stored weights); else None."""
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return inits[name]
    for node in graph.node:
        if name in node.output and node.op_type == "Cast" and node.input[0] in inits:
            return inits[node.input[0]]
    return None


def find_head(model) -> Head | None:
    """The final Gemm of a member's ONNX graph (the node that produces its output), or None when the output is not
    produced by a Gemm with initializer weights."""
    from onnx import helper, numpy_helper

    graph = model.graph
    out = graph.output[0].name
    node = next((n for n in graph.node if out in n.output), None)
    if node is None or node.op_type != "Gemm" or len(node.input) < 3:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("transA", 0)):
        return None
    w_init, b_init = _initializer_source(graph, node.input[1]), _initializer_source(graph, node.input[2])
    if w_init is None or b_init is None:
        return None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_b = bool(int(attrs.get("transB", 0)))
    w = numpy_helper.to_array(w_init).astype(np.float64)
    w = w if trans_b else w.T
    b = numpy_helper.to_array(b_init).astype(np.float64).reshape(-1)
    if w.ndim != 2 or w.shape[0] != NUM_CLASSES or b.shape != (NUM_CLASSES,) or beta == 0 or alpha == 0:
        return None
    return Head(weight=alpha * w, bias=beta * b, weight_init=w_init.name, bias_init=b_init.name, trans_b=trans_b,
                alpha=alpha, beta=beta, embedding=node.input[0])


@dataclass
class MemberFeatures:
    """One member on the examples: logits, and embeddings + head when the last layer can be fine-tuned."""

    spec: MemberSpec
    logits: np.ndarray  # (n, 7)
    head: Head | None = None
    embeddings: np.ndarray | None = None  # (n, D)

    def logits_with(self, weight: np.ndarray | None, bias: np.ndarray | None, idx=slice(None)) -> np.ndarray:
        if weight is None and bias is None:
            return self.logits[idx]
        return self.embeddings[idx] @ weight.T + bias


def member_features(spec: BundleSpec, crops: dict[int, np.ndarray], batch: int = 64) -> list[MemberFeatures]:
    """Run every member on the crops (onnxruntime, CPU) with its final Gemm's input exposed as an extra output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from rtfer.backends.onnxruntime import session_options

    out = []
    for m in spec.members:
        model = onnx.load(str(spec.path / m.file))
        head = find_head(model)
        if head is None:
            log.info("member %s: its output is not a Gemm layer; its last layer cannot be fine-tuned", m.name)
        else:
            model.graph.output.append(helper.make_tensor_value_info(head.embedding, TensorProto.FLOAT, None))
        sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        x_all = preprocess(crops[m.crop_size], m)
        names = [o.name for o in sess.get_outputs()]
        logits, embs = [], []
        for i in range(0, len(x_all), batch):
            x = x_all[i:i + batch]
            views = [x, np.ascontiguousarray(x[..., ::-1])] if m.tta_flip else [x]
            res = [sess.run(names, {sess.get_inputs()[0].name: v}) for v in views]
            logits.append(np.mean([r[0] for r in res], axis=0))  # flip TTA averages logits (linear in the embedding)
            if head is not None:
                embs.append(np.mean([r[1].reshape(len(x), -1) for r in res], axis=0))
        feats = MemberFeatures(spec=m, logits=np.concatenate(logits).astype(np.float64))
        if head is not None:
            e = np.concatenate(embs).astype(np.float64)
            recon = e @ head.weight.T + head.bias
            if e.shape[1] != head.weight.shape[1] or np.abs(recon - feats.logits).max() > 1e-3 * (1 + np.abs(feats.logits).max()):
                log.info("member %s: embeddings do not reproduce its logits; its last layer will not be fine-tuned",
                         m.name)
            else:
                feats.head, feats.embeddings = head, e
        out.append(feats)
    return out
