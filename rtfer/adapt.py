"""Few-shot adaptation (``rtfer adapt``): a bundle adapted to the user's own setting from a few labelled examples.

The examples folder holds one sub-folder per emotion (canonical names, FER2013's folder names and the common
variants, case-insensitive) with photos or video frames (faces detected and aligned exactly as ``rtfer analyze``
does, largest face), face crops, or short clips (a sample of frames, all labelled by the folder).

What is adapted is chosen by cross-validation on the examples, grouped by source file (frames of one clip never sit
on both sides of a split). Candidates, all fitted in numpy/scipy (no torch at run time):

- ``stacker:soft_vote`` / ``stacker:logistic`` — a re-fitted combiner (soft-vote weights, or a logistic stacker over
  the members' probabilities) and temperature;
- ``prior`` — a log-prior correction (one offset per class), baked into each member's last-layer bias;
- ``finetune:<strength>`` — a light fine-tune of each member's last layer (the final Gemm: weights and bias) on the
  member's embeddings (the Gemm's input), pulled towards the base weights by an L2 penalty.

The last layer is fine-tuned *on embeddings*, not as a correction on logits: the embedding is read by adding the
final Gemm's input as a second output to an in-memory copy of each member's ONNX graph (no re-export needed, so any
bundle that training exported can be adapted), and the fine-tuned weights are written back into a copy of the
member's ONNX file under the same initializer names. The adapted bundle therefore runs on every backend
(onnxruntime, TensorRT builds from the ONNX, the torch backend reads the same initializers) with no new bundle
fields to interpret. A member whose output is not produced by a Gemm cannot be fine-tuned; then only the stacker
candidates are tried (logged).

Every candidate is scored on the held-out folds exactly as the runtime computes the adapted bundle's output, its
temperature cross-fitted (each fold's held-out predictions are calibrated with a temperature fitted on the other
folds' held-out predictions, so no figure is fitted on the faces it scores). The result must beat the base bundle on
the held-out folds: accuracy and mean-class accuracy not lower, and one of them, or at equal accuracies the log-loss,
better. The log-loss is compared with the better of the base as shipped and the base re-calibrated the same way, so
that a temperature change alone, which moves no prediction, never counts as an improvement. Otherwise nothing is
written. The bundle is written to a temporary folder next to the output, verified (hashes, a reload, and the
reloaded bundle's predictions against the fitted ones) and only then renamed into place.

The fits are small (tens of faces, a few hundred parameters): BLAS is held to one thread while they run, since
OpenBLAS's worker threads cost far more than they save on such sizes (they busy-wait between the many tiny calls
of L-BFGS: on a 2-core machine the fits took ~5.5 s of CPU time instead of ~0.2 s, adaptation as a whole ~3.5x
its CPU time, and far more wall time on a loaded machine).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer.bundle import BUNDLE_FILE, BundleSpec, MemberSpec, preprocess, resolve_bundle_path, sha256_file
from rtfer.ensemble import fit_temperature, make_ensemble, softmax
from rtfer.errors import BundleError, InputError, OutputError
from rtfer.labels import CLASS_INDEX, CLASSES, FER2013_FOLDER_TO_CLASS, NUM_CLASSES

log = logging.getLogger(__name__)

#: Folder-name variants accepted besides the canonical class names and FER2013's folder names.
ALIASES: dict[str, str] = {
    "happy": "happiness", "happiness": "happiness", "joy": "happiness", "smile": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "angry": "anger", "anger": "anger",
    "surprised": "surprise", "surprise": "surprise",
    "disgusted": "disgust", "disgust": "disgust",
    "fearful": "fear", "fear": "fear", "scared": "fear", "afraid": "fear",
    "neutral": "neutral", "calm": "neutral",
}

#: ``--crops auto``: an image whose sides are both at most this many pixels, and roughly square, is taken as a face
#: crop (FER2013's 48x48 faces, RAF-DB's 100x100 aligned faces); larger images are photos in which faces are detected.
CROP_MAX_SIDE = 160
CROP_MAX_ASPECT = 1.25
#: Fine-tune strengths tried (the L2 pull towards the base weights; smaller moves further from the base).
FINETUNE_STRENGTHS = (10.0, 3.0, 1.0)
#: Fewer faces than this in a class draws a warning.
FEW_FACES = 3


@contextlib.contextmanager
def _blas_single_thread():
    """Hold BLAS (numpy's and scipy's OpenBLAS) to one thread while the small fits run (see the module docstring)."""
    import scipy.optimize  # noqa: F401  (loads scipy's BLAS, so that the limit reaches it too)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def class_for_folder(name: str) -> str | None:
    """The canonical class a sub-folder name stands for (case-insensitive), or None when it names none."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in CLASS_INDEX:
        return key
    if key in FER2013_FOLDER_TO_CLASS:
        return FER2013_FOLDER_TO_CLASS[key]
    return ALIASES.get(key)


def accepted_names() -> list[str]:
    return sorted(set(CLASSES) | set(FER2013_FOLDER_TO_CLASS) | set(ALIASES))


# -- examples --------------------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Aligned face crops with their labels and source files (as indices; names are never stored in a bundle)."""

    crops: dict[int, np.ndarray]  # member input size -> (n, S, S, 3) uint8 RGB
    labels: np.ndarray  # (n,) canonical class index
    groups: np.ndarray  # (n,) index of the source file
    kinds: dict[str, int] = field(default_factory=dict)  # faces from photos, crops, video frames
    files: int = 0  # source files that gave at least one face
    unreadable: int = 0
    no_face: int = 0  # readable files (photos, frames of clips) without a face

    def __post_init__(self) -> None:
        n = len(self.labels)
        for size, c in self.crops.items():
            if c.shape != (n, size, size, 3):
                raise ValueError(f"crops for size {size} must be ({n}, {size}, {size}, 3), got {c.shape}")
        if self.groups.shape != (n,):
            raise ValueError(f"groups must be ({n},), got {self.groups.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        return {c: int(k) for c, k in zip(CLASSES, counts)}


def _square_crop(image_bgr: np.ndarray, size: int) -> np.ndarray:
    """A face crop (any size) -> centre square resized to ``size``, RGB (as the training crops were fed)."""
    import cv2

    h, w = image_bgr.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    sq = image_bgr[y:y + s, x:x + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(sq, (size, size), interpolation=interp)[:, :, ::-1])


def looks_like_crop(image: np.ndarray) -> bool:
    """``--crops auto``'s rule: small and roughly square (see :data:`CROP_MAX_SIDE`)."""
    h, w = image.shape[:2]
    return max(h, w) <= CROP_MAX_SIDE and max(h, w) / max(1, min(h, w)) <= CROP_MAX_ASPECT


class _FaceReader:
    """Turns example files into aligned crops: photos and frames through the analyze detector (largest face), crops
    as they are."""

    def __init__(self, spec: BundleSpec, detector: str, crops: str, clip_frames: int) -> None:
        if crops not in ("auto", "yes", "no"):
            raise ValueError(f"crops must be auto, yes or no, got {crops!r}")
        self.spec = spec
        self.sizes = sorted({m.input_size for m in spec.members})
        self.detector_name = detector
        self.crops_mode = crops
        self.clip_frames = int(clip_frames)
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:  # the analyze detector, built exactly as rtfer.pipeline.Pipeline builds it
            from rtfer.detection import create_detector
            from rtfer.pipeline import AnalyzeOptions, resolve_detector

            o = AnalyzeOptions(detector=self.detector_name, device="cpu")
            self._detector = create_detector(
                resolve_detector(o.detector, self.spec), det_width=o.det_width, score_threshold=o.det_threshold,
                min_face=o.min_face, max_faces=o.max_faces, device="cpu", allow_fallback=True)
        return self._detector

    def crop(self, image: np.ndarray) -> dict[int, np.ndarray]:
        return {s: _square_crop(image, s) for s in self.sizes}

    def largest_face(self, image: np.ndarray) -> dict[int, np.ndarray] | None:
        from rtfer.detection.align import align_faces

        faces = self.detector.detect(image)
        if len(faces) == 0:
            return None
        area = (faces.xyxy[:, 2] - faces.xyxy[:, 0]) * (faces.xyxy[:, 3] - faces.xyxy[:, 1])
        lm = faces.landmarks[[int(np.argmax(area))]]
        return {s: align_faces(image, lm, s, self.spec.alignment_template)[0][0] for s in self.sizes}

    def image_faces(self, image: np.ndarray) -> tuple[str, dict[int, np.ndarray] | None]:
        if self.crops_mode == "yes" or (self.crops_mode == "auto" and looks_like_crop(image)):
            return "crop", self.crop(image)
        return "photo", self.largest_face(image)

    def clip_faces(self, path: Path) -> tuple[list[dict[int, np.ndarray]], int]:
        """Faces of a sample of a clip's frames (``clip_frames`` spread over the clip; 0 = every frame) and the
        number of sampled frames without a face."""
        from rtfer.capture import open_source

        src = open_source(str(path))
        try:
            total = src.frame_count or 0
            n = self.clip_frames
            wanted = None if n <= 0 or not total else set(np.linspace(0, total - 1, min(n, total)).round().astype(int))
            step = 1 if n <= 0 or total else 5  # unknown length: every 5th frame, at most clip_frames of them
            out, missed, seen = [], 0, 0
            for frame in src:
                i = seen
                seen += 1
                if wanted is not None and i not in wanted:
                    continue
                if wanted is None and i % step:
                    continue
                face = self.largest_face(frame.image)
                if face is None:
                    missed += 1
                else:
                    out.append(face)
                if wanted is None and n > 0 and len(out) + missed >= n:
                    break
            if not seen:
                raise InputError(f"{path.name}: no frame decoded")
            return out, missed
        finally:
            src.close()


def collect_examples(folder: str | Path, spec: BundleSpec, *, detector: str = "auto", crops: str = "auto",
                     clip_frames: int = 10) -> Examples:
    """Read EXAMPLES (one sub-folder per emotion) into aligned crops. Raises :class:`InputError` (one line) for an
    empty folder, an unknown sub-folder name, or no face in any example; unreadable files are skipped and counted."""
    from rtfer.capture import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"examples folder not found: {folder}" if not folder.exists()
                         else f"examples must be a folder with one sub-folder per emotion: {folder}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not subdirs:
        raise InputError(f"examples folder {folder} is empty: it needs one sub-folder per emotion "
                         f"({', '.join(CLASSES)})" + (f"; {len(loose)} files lie outside any sub-folder" if loose else ""))
    unknown = [p.name for p in subdirs if class_for_folder(p.name) is None]
    if unknown:
        raise InputError(f"unknown emotion folder {unknown[0]!r} in {folder}; accepted names (any case): "
                         f"{', '.join(accepted_names())}")
    if loose:
        log.warning("ignored %d files directly in %s (examples go in a sub-folder per emotion)", len(loose), folder)
    reader = _FaceReader(spec, detector, crops, clip_frames)
    crops_out: dict[int, list] = {s: [] for s in reader.sizes}
    labels: list[int] = []
    groups: list[int] = []
    kinds = {"photo": 0, "crop": 0, "video_frame": 0}
    unreadable = no_face = files = 0
    n_files = 0
    for sub in subdirs:
        label = CLASS_INDEX[class_for_folder(sub.name)]
        for path in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            n_files += 1
            suffix = path.suffix.lower()
            faces: list[dict[int, np.ndarray]] = []
            kind = "photo"
            try:
                image = read_image(path) if suffix not in VIDEO_EXTENSIONS else None
                if image is not None:
                    kind, face = reader.image_faces(image)
                    if face is None:
                        no_face += 1
                    else:
                        faces = [face]
                elif suffix in IMAGE_EXTENSIONS:
                    unreadable += 1
                    log.debug("skipped %s: not a readable image", path.name)
                    continue
                else:
                    kind = "video_frame"
                    faces, missed = reader.clip_faces(path)
                    no_face += missed
            except InputError as exc:
                unreadable += 1
                log.debug("skipped %s: %s", path.name, exc)
                continue
            if not faces:
                continue
            for face in faces:
                for s in reader.sizes:
                    crops_out[s].append(face[s])
                labels.append(label)
                groups.append(files)
            kinds[kind] += len(faces)
            files += 1
    if unreadable:
        log.warning("skipped %d unreadable file%s (not an image or a video that can be decoded)", unreadable,
                    "s" if unreadable != 1 else "")
    if n_files == 0:
        raise InputError(f"examples folder {folder} is empty: its emotion sub-folders hold no files")
    if not labels:
        raise InputError(f"no face found in any of the {n_files} example files in {folder}"
                         + (f" ({unreadable} unreadable)" if unreadable else "")
                         + "; for face crops larger than 160 px use --crops yes")
    if no_face:
        log.warning("%d example image%s or frame%s had no face and %s skipped", no_face, "s" if no_face != 1 else "",
                    "s" if no_face != 1 else "", "were" if no_face != 1 else "was")
    ex = Examples(crops={s: np.stack(v) for s, v in crops_out.items()}, labels=np.asarray(labels, np.int64),
                  groups=np.asarray(groups, np.int64), kinds={k: v for k, v in kinds.items() if v}, files=files,
                  unreadable=unreadable, no_face=no_face)
    for c, k in ex.per_class().items():
        if 0 < k < FEW_FACES:
            log.warning("class %s has only %d face%s: its figures will be noisy", c, k, "s" if k != 1 else "")
    missing = [c for c, k in ex.per_class().items() if k == 0]
    if missing:
        log.info("no examples of %s: those classes keep the base model's behaviour", ", ".join(missing))
    return ex


# -- member heads and embeddings -------------------------------------------------------------------------------------
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
        x_all = preprocess(crops[m.input_size], m)
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


# -- the adapted model as parameters ---------------------------------------------------------------------------------
@dataclass
class Params:
    """What a candidate changes: per-member last layers (None = unchanged), the ensemble and its temperature."""

    heads: list[tuple[np.ndarray, np.ndarray] | None]
    ensemble: dict
    temperature: float = 1.0

    def member_probs(self, feats: list[MemberFeatures], idx=slice(None)) -> list[np.ndarray]:
        out = []
        for f, h in zip(feats, self.heads):
            z = f.logits[idx] if h is None else f.embeddings[idx] @ h[0].T + h[1]
            out.append(softmax(z, f.spec.temperature))
        return out

    def predict(self, feats: list[MemberFeatures], idx=slice(None), temperature: float | None = None) -> np.ndarray:
        """Exactly what the runtime computes for the adapted bundle (rtfer.bundle.Bundle.combine)."""
        t = self.temperature if temperature is None else temperature
        ens = make_ensemble(self.ensemble, len(feats), t)
        return np.asarray(ens(self.member_probs(feats, idx)), np.float64)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def _ce_grad(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(z) and its gradient with respect to z."""
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(n), y], 1e-300, None))))
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    return loss, g / n


def _minimize(fun, x0: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 150})
    return res.x


def _base_params(spec: BundleSpec, feats: list[MemberFeatures]) -> Params:
    return Params(heads=[None] * len(feats), ensemble=dict(spec.ensemble), temperature=spec.temperature)


def _fit_soft_vote(spec, feats, idx, y, present) -> Params:
    """Soft-vote weights on a 0.05 grid by NLL (smoother than accuracy on a few examples)."""
    m = len(feats)
    base = _base_params(spec, feats)
    if m == 1:
        return base
    steps = 20
    import itertools

    grid = [np.array([*c, steps - sum(c)], np.float64) / steps
            for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    probs = base.member_probs(feats, idx)
    best = min(grid, key=lambda w: (_nll(make_ensemble({"method": "soft_vote", "weights": w.tolist()}, m)(probs), y),
                                    float(np.abs(w - 1 / m).sum())))
    return Params(heads=[None] * m, ensemble={"method": "soft_vote", "weights": best.tolist()})


def _fit_logistic(spec, feats, idx, y, present, c: float = 1.0) -> Params:
    """Multinomial logistic regression over the concatenated member probabilities (rtfer's LogisticStacker), L2 on
    the coefficients as scikit-learn's default (C=1); a class absent from the fold is never predicted."""
    probs = _base_params(spec, feats).member_probs(feats, idx)
    x = np.concatenate([np.asarray(p, np.float64) for p in probs], axis=1)
    n, d = x.shape
    cls = np.unique(y)

    def fun(theta):
        w = theta[:len(cls) * d].reshape(len(cls), d)
        b = theta[len(cls) * d:]
        yy = np.searchsorted(cls, y)
        loss, g = _ce_grad(x @ w.T + b, yy)
        reg = 0.5 / (c * n)
        return loss + reg * float((w ** 2).sum()), np.concatenate([(g.T @ x + 2 * reg * w).ravel(), g.sum(0)])

    theta = _minimize(fun, np.zeros(len(cls) * (d + 1)))
    coef = np.zeros((NUM_CLASSES, d))
    intercept = np.full(NUM_CLASSES, -30.0)
    coef[cls] = theta[:len(cls) * d].reshape(len(cls), d)
    intercept[cls] = theta[len(cls) * d:]
    return Params(heads=[None] * len(feats), ensemble={"method": "logistic", "coef": coef.tolist(),
                                                      "intercept": intercept.tolist()})


def _fit_prior(spec, feats, idx, y, present, strength: float = 0.1) -> Params | None:
    """A log-prior offset per class (absent classes fixed at 0) on the base ensemble's output, baked into every
    member's last-layer bias (member m gets T_m * offset, so each member's probabilities are multiplied by
    exp(offset) before the vote)."""
    if any(f.head is None for f in feats):
        return None
    base = _base_params(spec, feats)
    logp = np.log(np.clip(base.predict(feats, idx, temperature=1.0), 1e-12, None))
    mask = np.zeros(NUM_CLASSES)
    mask[present] = 1.0

    def fun(delta):
        d = delta * mask
        loss, g = _ce_grad(logp + d, y)
        return loss + 0.5 * strength * float((d ** 2).sum()), (g.sum(0) + strength * d) * mask

    delta = _minimize(fun, np.zeros(NUM_CLASSES)) * mask
    heads = [(f.head.weight, f.head.bias + f.spec.temperature * delta) for f in feats]
    return Params(heads=heads, ensemble=dict(spec.ensemble))


def _fit_finetune(spec, feats, idx, y, present, strength: float = 0.1) -> Params | None:
    """Each member's last layer re-fitted on its embeddings: cross-entropy on the examples plus
    ``strength``/2 * (s * |dW|^2 + |db|^2), s = mean squared embedding norm / D (so that the penalty is on the
    expected change of the logits). Rows of classes without examples stay as they were."""
    if any(f.head is None for f in feats):
        return None
    heads = []
    rows = np.asarray(present, np.int64)
    for f in feats:
        e = f.embeddings[idx]
        w0, b0, t = f.head.weight, f.head.bias, f.spec.temperature
        dim = e.shape[1]
        scale = float(np.mean((e ** 2).sum(1))) / dim
        k = len(rows)

        def fun(theta, e=e, w0=w0, b0=b0, t=t, dim=dim, scale=scale, k=k):
            dw = theta[:k * dim].reshape(k, dim)
            db = theta[k * dim:]
            w = w0.copy()
            b = b0.copy()
            w[rows] += dw
            b[rows] += db
            loss, g = _ce_grad((e @ w.T + b) / t, y)
            g = g[:, rows] / t
            reg = 0.5 * strength * (scale * float((dw ** 2).sum()) + float((db ** 2).sum()))
            return loss + reg, np.concatenate([(g.T @ e + strength * scale * dw).ravel(), g.sum(0) + strength * db])

        theta = _minimize(fun, np.zeros(k * (dim + 1)))
        w, b = w0.copy(), b0.copy()
        w[rows] += theta[:k * dim].reshape(k, dim)
        b[rows] += theta[k * dim:]
        heads.append((w, b))
    return Params(heads=heads, ensemble=dict(spec.ensemble))


def candidate_fitters() -> dict[str, object]:
    """name -> fit(spec, feats, idx, labels, present_classes) -> Params | None."""
    fitters: dict[str, object] = {
        "stacker:soft_vote": _fit_soft_vote,
        "stacker:logistic": _fit_logistic,
        "prior": _fit_prior,
    }
    for s in FINETUNE_STRENGTHS:
        fitters[f"finetune:{s:g}"] = (lambda spec, feats, idx, y, present, s=s:
                                      _fit_finetune(spec, feats, idx, y, present, strength=s))
    return fitters


# -- cross-validation ------------------------------------------------------------------------------------------------
def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Fold index arrays: every source file (group) lies in one fold; each class's files are spread round-robin over
    the folds (a file holds one class), in a seeded random order."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise InputError("adaptation needs examples from at least 2 source files (held-out folds are whole files)")
    folds = int(max(2, min(folds, len(uniq))))
    group_label = {g: int(labels[groups == g][0]) for g in uniq}
    assign = {}
    offset = 0
    for c in range(NUM_CLASSES):
        gs = [g for g in uniq if group_label[g] == c]
        rng.shuffle(gs)
        for i, g in enumerate(gs):
            assign[g] = (offset + i) % folds
        offset += len(gs)  # the next class starts where this one ended, so small classes fill different folds
    fold_of = np.array([assign[g] for g in groups])
    return [np.flatnonzero(fold_of == k) for k in range(folds) if np.any(fold_of == k)]


@dataclass
class Scores:
    accuracy: float
    mean_class_accuracy: float
    recall: dict[str, float]
    nll: float

    @classmethod
    def of(cls, probs: np.ndarray, labels: np.ndarray) -> Scores:
        pred = probs.argmax(1)
        recall = {CLASSES[c]: float(np.mean(pred[labels == c] == c)) for c in range(NUM_CLASSES) if np.any(labels == c)}
        return cls(accuracy=float(np.mean(pred == labels)), mean_class_accuracy=float(np.mean(list(recall.values()))),
                   recall=recall, nll=_nll(probs, labels))

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "mean_class_accuracy": self.mean_class_accuracy, "recall": self.recall,
                "nll": self.nll}

    def beats(self, other: Scores, reference_nll: float | None = None) -> bool:
        """Not lower on accuracy or mean-class accuracy, and better on one of them or, at equal accuracies, on the
        log-loss (on ten faces per class one face is ten points of a class: ties are common, and a model whose
        held-out probabilities are better while no accuracy drops is the better model). ``reference_nll`` (the base
        re-calibrated, see :func:`run_adaptation`), when lower than ``other.nll``, is the log-loss to beat: a
        temperature change alone moves no prediction and is not an improvement."""
        eps = 1e-9
        if self.accuracy < other.accuracy - eps or self.mean_class_accuracy < other.mean_class_accuracy - eps:
            return False
        nll_to_beat = other.nll if reference_nll is None else min(other.nll, reference_nll)
        return (self.accuracy > other.accuracy + eps or self.mean_class_accuracy > other.mean_class_accuracy + eps
                or self.nll < nll_to_beat - 1e-3)


def cross_validate(fit, spec, feats, labels, folds: list[np.ndarray]) -> np.ndarray | None:
    """Out-of-fold probabilities (temperature 1) of the candidate ``fit``; None when it does not apply."""
    oof = np.zeros((len(labels), NUM_CLASSES))
    everything = np.arange(len(labels))
    for test in folds:
        train = np.setdiff1d(everything, test)
        present = np.unique(labels[train])
        params = fit(spec, feats, train, labels[train], present)
        if params is None:
            return None
        oof[test] = params.predict(feats, test, temperature=1.0)
    return oof


def cross_fit_temperature(oof: np.ndarray, labels: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold probabilities calibrated without scoring a fitted temperature on the faces it was fitted on:
    each fold's are rescaled by the temperature fitted on the other folds' (themselves out-of-fold) predictions.
    Predictions (the argmax) are unchanged."""
    logp = np.log(np.clip(oof, 1e-12, None))
    out = np.empty_like(oof, dtype=np.float64)
    everything = np.arange(len(labels))
    for test in folds:
        train = np.setdiff1d(everything, test)
        out[test] = softmax(logp[test], fit_temperature(logp[train], labels[train]))
    return out


# -- result and bundle -----------------------------------------------------------------------------------------------
@dataclass
class AdaptResult:
    base: BundleSpec
    examples: Examples
    folds: int
    before: Scores
    candidates: dict[str, Scores]
    chosen: str | None
    after: Scores | None
    params: Params | None
    features: list[MemberFeatures] = field(default_factory=list)  # the members on the examples (for the check)
    seconds: float = 0.0
    output: Path | None = None
    base_recalibrated_nll: float | None = None  # held-out log-loss of the base with a cross-fitted temperature

    @property
    def improved(self) -> bool:
        return self.chosen is not None

    def table(self) -> str:
        """Before/after cross-validated accuracy, overall and per class, for the terminal."""
        counts = self.examples.per_class()
        lines = [f"examples: {len(self.examples)} faces from {self.examples.files} files "
                 f"({', '.join(f'{k} {v}' for k, v in self.examples.kinds.items())}); "
                 f"{self.folds}-fold cross-validation grouped by source file"]
        head = f"{'class':<10} {'faces':>5} {'before':>8} {'after':>8}"
        lines += ["", head, "-" * len(head)]
        after = self.after
        for c in CLASSES:
            b = self.before.recall.get(c)
            a = after.recall.get(c) if after else None
            lines.append(f"{c:<10} {counts[c]:>5} {_pc(b):>8} {_pc(a):>8}")
        lines.append("-" * len(head))
        lines.append(f"{'accuracy':<10} {len(self.examples):>5} {_pc(self.before.accuracy):>8} "
                     f"{_pc(after.accuracy if after else None):>8}")
        lines.append(f"{'mean-class':<10} {'':>5} {_pc(self.before.mean_class_accuracy):>8} "
                     f"{_pc(after.mean_class_accuracy if after else None):>8}")
        lines.append(f"{'log-loss':<10} {'':>5} {self.before.nll:>8.3f} "
                     f"{'-' if after is None else f'{after.nll:.3f}':>8}"
                     + ("" if self.base_recalibrated_nll is None
                        else f"   (base re-calibrated: {self.base_recalibrated_nll:.3f})"))
        lines += ["", "candidates (held-out accuracy / mean-class): " + ", ".join(
            f"{k} {_pc(v.accuracy)} / {_pc(v.mean_class_accuracy)}" for k, v in self.candidates.items())]
        if self.chosen:
            lines.append(f"chosen: {self.chosen} (temperature {self.params.temperature:.3f}); "
                         f"adapted in {self.seconds:.1f} s")
        else:
            lines.append(f"no candidate beat the base bundle on the held-out folds; nothing written "
                         f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _pc(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def bundle_hash(spec: BundleSpec) -> str:
    """A bundle's identity: sha256 of its bundle.json (which holds every member file's sha256)."""
    return sha256_file(spec.path / BUNDLE_FILE)


def run_adaptation(spec: BundleSpec, examples: Examples, *, folds: int = 5, seed: int = 0,
                   method: str = "auto") -> AdaptResult:
    """Score the base and every candidate on grouped held-out folds; fit the winner on all examples."""
    with _blas_single_thread():
        return _run_adaptation(spec, examples, folds=folds, seed=seed, method=method)


def _run_adaptation(spec: BundleSpec, examples: Examples, *, folds: int, seed: int, method: str) -> AdaptResult:
    t0 = time.perf_counter()
    feats = member_features(spec, examples.crops)
    y = examples.labels
    fold_idx = grouped_folds(y, examples.groups, folds, seed)
    base = _base_params(spec, feats)
    before = Scores.of(base.predict(feats), y)
    # The base with its temperature cross-fitted like every candidate's: the log-loss a candidate has to beat.
    base_recalibrated = _nll(cross_fit_temperature(base.predict(feats, temperature=1.0), y, fold_idx), y)
    fitters = candidate_fitters()
    if method != "auto":
        chosen_names = [k for k in fitters if k == method or k.split(":")[0] == method]
        if not chosen_names:
            raise InputError(f"unknown adaptation method {method!r}; choose auto, stacker, prior, finetune or one of "
                             f"{', '.join(fitters)}")
        fitters = {k: fitters[k] for k in chosen_names}
    if len(np.unique(y)) < NUM_CLASSES:
        fitters.pop("stacker:logistic", None)  # a stacker fitted from scratch would never predict an absent class
    candidates: dict[str, Scores] = {}
    oofs: dict[str, np.ndarray] = {}
    for name, fit in fitters.items():
        oof = cross_validate(fit, spec, feats, y, fold_idx)
        if oof is None:
            log.info("candidate %s does not apply to this bundle", name)
            continue
        oofs[name] = oof
        candidates[name] = Scores.of(cross_fit_temperature(oof, y, fold_idx), y)
        log.info("candidate %s: held-out accuracy %.3f, mean-class %.3f, nll %.3f", name,
                 candidates[name].accuracy, candidates[name].mean_class_accuracy, candidates[name].nll)
    eligible = [k for k, s in candidates.items() if s.beats(before, base_recalibrated)]
    chosen = max(eligible, key=lambda k: (candidates[k].accuracy, candidates[k].mean_class_accuracy,
                                          -candidates[k].nll)) if eligible else None
    params = after = None
    if chosen:
        present = np.unique(y)
        params = fitters[chosen](spec, feats, np.arange(len(y)), y, present)
        # deployed temperature: fitted on all the held-out predictions (the figures above never saw it)
        params.temperature = fit_temperature(np.log(np.clip(oofs[chosen], 1e-12, None)), y)
        after = candidates[chosen]
    return AdaptResult(base=spec, examples=examples, folds=len(fold_idx), before=before, candidates=candidates,
                       chosen=chosen, after=after, params=params, features=feats, seconds=time.perf_counter() - t0,
                       base_recalibrated_nll=base_recalibrated)


def check_output(out: str | Path, base: BundleSpec, overwrite: bool) -> Path:
    """Refuse an existing output without ``overwrite``, the base bundle itself, or a missing parent folder."""
    out = Path(out).expanduser()
    if out.resolve() == base.path.resolve():
        raise OutputError(f"the output {out} is the base bundle itself; choose another folder")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; use --overwrite to replace it")
    if out.exists() and not (out.is_dir() and ((out / BUNDLE_FILE).is_file() or not any(out.iterdir()))):
        raise OutputError(f"output {out} exists and is not a bundle folder; refusing to replace it")
    if not out.resolve().parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {out.resolve().parent} does not exist")
    return out


def _write_member(src: Path, dst: Path, head: Head, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy of a member's ONNX file with its final Gemm's weights replaced (stored in the original dtype). Returns
    the effective weights after that rounding."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    w_init, b_init = inits[head.weight_init], inits[head.bias_init]
    w_dtype = numpy_helper.to_array(w_init).dtype
    b_dtype = numpy_helper.to_array(b_init).dtype
    stored_w = (weight / head.alpha if head.trans_b else (weight / head.alpha).T).astype(w_dtype)
    stored_b = (bias / head.beta).reshape(numpy_helper.to_array(b_init).shape).astype(b_dtype)
    w_init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(stored_w), head.weight_init))
    b_init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(stored_b), head.bias_init))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    w_eff = head.alpha * (stored_w.astype(np.float64) if head.trans_b else stored_w.astype(np.float64).T)
    return w_eff, head.beta * stored_b.astype(np.float64).reshape(-1)


def write_adapted_bundle(result: AdaptResult, out: str | Path, *, overwrite: bool = False,
                         name: str | None = None) -> Path:
    """Write the adapted bundle to a temporary folder beside ``out``, verify it, then rename it into place."""
    from rtfer import __version__
    from rtfer.bundle import Bundle, write_bundle_json

    if not result.improved:
        raise BundleError("nothing to write: no candidate beat the base bundle")
    base, params, ex = result.base, result.params, result.examples
    out = check_output(out, base, overwrite)
    base.verify()
    feats = result.features
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        meta = copy.deepcopy(base.raw)
        members = []
        changed = []
        final_heads = []
        for m, f, h in zip(base.members, feats, params.heads):
            d = m.to_dict()
            d.pop("int8", None)  # INT8 files are made from (and gated on) the base model: not carried over
            if h is None:
                shutil.copyfile(base.path / m.file, tmp / m.file)
                if sha256_file(tmp / m.file) != (m.sha256 or sha256_file(base.path / m.file)):
                    raise BundleError(f"copy of member {m.file} does not match its sha256")
                final_heads.append(None)
            else:
                d["file"] = f"{Path(m.file).stem}-adapted.onnx"
                final_heads.append(_write_member(base.path / m.file, tmp / d["file"], f.head, h[0], h[1]))
                changed.append(m.name)
            members.append(d)
        meta["members"] = members
        meta["name"] = name or f"{base.name}-adapted"
        meta["version"] = f"{base.version}+adapted.{datetime.date.today():%Y%m%d}"
        meta["ensemble"] = params.ensemble
        meta["temperature"] = float(params.temperature)
        meta.pop("metrics", None)  # the base's validation figures do not describe the adapted model
        meta.pop("combiners", None)  # fitted to the base's member outputs and data: the adaptation chose its own
        if meta.pop("quantization", None) is not None:
            log.info("the base bundle's INT8 members are not carried over (quantise the adapted bundle anew)")
        counts = ex.per_class()
        cv = {"folds": result.folds, "grouped_by": "source file", "before": result.before.to_dict(),
              "after": result.after.to_dict(), "base_recalibrated_nll": result.base_recalibrated_nll}
        meta["metrics"] = {
            "split": "adaptation examples (held-out folds)",
            "count": len(ex),
            "ensemble": {"method": f"adapted: {result.chosen}", "cross_validated": True, "folds": result.folds,
                         "accuracy": result.after.accuracy, "mean_class_accuracy": result.after.mean_class_accuracy,
                         "recall": result.after.recall},
        }
        meta["adaptation"] = {
            "base": {"name": base.name, "version": base.version, "sha256": bundle_hash(base),
                     "members": {m.name: m.sha256 or sha256_file(base.path / m.file) for m in base.members}},
            "method": result.chosen,
            "changed_members": changed,
            "examples": {"faces": len(ex), "files": ex.files, "per_class": counts, "kinds": ex.kinds,
                         "skipped_unreadable": ex.unreadable, "without_face": ex.no_face},
            "cross_validation": cv,
            "candidates": {k: {"accuracy": v.accuracy, "mean_class_accuracy": v.mean_class_accuracy, "nll": v.nll}
                           for k, v in result.candidates.items()},
            "temperature": float(params.temperature),
            "seconds": round(result.seconds, 2),
            "rtfer_version": __version__,
            "date": f"{datetime.date.today():%Y-%m-%d}",
        }
        write_bundle_json(tmp, meta)
        # End to end: the written bundle, loaded as analyze loads it, reproduces the fitted predictions.
        spec = BundleSpec.read(tmp)
        spec.verify()
        written = Bundle(spec, "onnxruntime", "cpu").predict(ex.crops)
        check = Params(heads=[None if h is None else h for h in final_heads], ensemble=params.ensemble,
                       temperature=params.temperature).predict(feats)
        agree = float(np.mean(written.argmax(1) == check.argmax(1)))
        diff = float(np.abs(written - check).max())
        if agree < 0.98 or diff > 0.05:
            raise BundleError(f"the written bundle does not reproduce the fitted model (top-1 agreement {agree:.3f}, "
                              f"max probability difference {diff:.3f})")
        log.info("written bundle reproduces the fitted model: top-1 agreement %.3f, max |dp| %.4f", agree, diff)
        if out.exists():  # --overwrite: swap, then remove the old bundle
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.output = out
    return out


def adapt(examples: str | Path, out: str | Path, *, bundle: str | Path = "default", overwrite: bool = False,
          detector: str = "auto", crops: str = "auto", clip_frames: int = 10, folds: int = 5, seed: int = 0,
          method: str = "auto", name: str | None = None) -> AdaptResult:
    """Adapt ``bundle`` to the labelled ``examples`` and write ``out`` when a candidate beats the base on held-out
    folds (see the module docstring). Returns the result either way; ``result.output`` is None when nothing was
    written."""
    t0 = time.perf_counter()
    spec = BundleSpec.read(resolve_bundle_path(bundle))
    spec.verify()
    out_path = check_output(out, spec, overwrite)  # before the work, so a refusal costs nothing
    ex = collect_examples(examples, spec, detector=detector, crops=crops, clip_frames=clip_frames)
    log.info("examples: %d faces (%s)", len(ex), ", ".join(f"{c} {k}" for c, k in ex.per_class().items() if k))
    with _blas_single_thread():
        result = run_adaptation(spec, ex, folds=folds, seed=seed, method=method)
        if result.improved:
            write_adapted_bundle(result, out_path, overwrite=overwrite, name=name)
    result.seconds = time.perf_counter() - t0
    return result

