"""Model bundles: a folder with bundle.json and one ONNX file per member.

bundle.json (format_version 1)::

    {"format": "rtfer-bundle", "format_version": 1, "name": ..., "version": ..., "interim": bool,
     "classes": [canonical order],
     "members": [{"name", "file", "architecture", "arch_kwargs", "input_size", "mean", "std",
                  "color": "rgb"|"gray", "sha256", "temperature"}],
     "ensemble": {"method": "soft_vote", "weights": [...]} | {"method": "logistic", "coef": [[...]], "intercept": [...]},
     "temperature": float,
     "alignment": {"template": [[x, y] * 5] in crop units (0..1)},
     "training": {...}, "metrics": {...},
     "quantization": {"int8": {"accepted": bool, "format", "calibration", "val", "cost_ms_per_face", ...}}}

A member may carry ``"int8": {"file", "sha256", "from_sha256"}``: its INT8 ONNX file
(``python -m rtfer.training quantize``), made from the FP member file whose sha256 is ``from_sha256`` (a re-exported
member makes its INT8 file stale). With ``"kept_fp": true`` the file is the member's own FP file: INT8 was not faster
for that member, so it runs FP when the bundle runs INT8.

Preprocessing reads these fields; nothing about a member is hard-coded elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtfer import backends
from rtfer.detection.align import ARCFACE_TEMPLATE
from rtfer.ensemble import Ensemble, make_ensemble, softmax
from rtfer.errors import BundleError
from rtfer.labels import CLASSES, NUM_CLASSES

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
FORMAT = "rtfer-bundle"
FORMAT_VERSION = 1
#: The name of a bundle's own combiner (bundle.json ``ensemble``); other names live in bundle.json ``combiners``.
DEFAULT_COMBINER = "default"


def builtin_bundles_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "bundles"


@dataclass
class MemberSpec:
    name: str
    file: str
    architecture: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "rgb"
    sha256: str = ""
    arch_kwargs: dict = field(default_factory=dict)
    temperature: float = 1.0
    tta_flip: bool = False  # average the logits of the crop and its mirror image (costs a second pass)
    int8: dict = field(default_factory=dict)  # {"file", "sha256", "from_sha256"[, "kept_fp"]} of the INT8 member file
    # Provenance: the weights the member started from ("none": trained from scratch), their licence, and the data
    # behind them (pretraining and fine-tuning).
    pretrained_from: str = "none"
    weights_license: str = ""
    training_data: str = ""
    # The size the runtime aligns this member's faces at before resizing them to input_size (0: input_size). A
    # member trained on 48 px FER2013 faces upsampled to a larger input sees the same softness at run time.
    align_size: int = 0

    @property
    def crop_size(self) -> int:
        return self.align_size or self.input_size

    @classmethod
    def from_dict(cls, d: dict) -> MemberSpec:
        try:
            spec = cls(name=str(d["name"]), file=str(d["file"]), architecture=str(d["architecture"]),
                       input_size=int(d["input_size"]), mean=tuple(float(v) for v in d["mean"]),
                       std=tuple(float(v) for v in d["std"]), color=str(d.get("color", "rgb")),
                       sha256=str(d.get("sha256", "")), arch_kwargs=dict(d.get("arch_kwargs", {})),
                       temperature=float(d.get("temperature", 1.0)), tta_flip=bool(d.get("tta_flip", False)),
                       int8=dict(d.get("int8") or {}), pretrained_from=str(d.get("pretrained_from", "none")),
                       weights_license=str(d.get("weights_license", "")),
                       training_data=str(d.get("training_data", "")), align_size=int(d.get("align_size", 0)))
        except KeyError as exc:
            raise BundleError(f"bundle member is missing the field {exc.args[0]!r}") from None
        if spec.color not in ("rgb", "gray"):
            raise BundleError(f"member {spec.name}: color must be 'rgb' or 'gray', got {spec.color!r}")
        if len(spec.mean) != 3 or len(spec.std) != 3:
            raise BundleError(f"member {spec.name}: mean and std need 3 values")
        return spec

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "architecture": self.architecture,
                "arch_kwargs": self.arch_kwargs, "input_size": self.input_size, "mean": list(self.mean),
                "std": list(self.std), "color": self.color, "sha256": self.sha256, "temperature": self.temperature,
                **({"tta_flip": True} if self.tta_flip else {}), **({"int8": dict(self.int8)} if self.int8 else {}),
                "pretrained_from": self.pretrained_from, "weights_license": self.weights_license,
                "training_data": self.training_data, **({"align_size": self.align_size} if self.align_size else {})}


@dataclass
class BundleSpec:
    """The parsed, validated contents of bundle.json."""

    path: Path
    name: str
    version: str
    members: list[MemberSpec]
    ensemble: dict
    temperature: float = 1.0
    classes: tuple[str, ...] = CLASSES
    alignment_template: np.ndarray = field(default_factory=lambda: np.array(ARCFACE_TEMPLATE, np.float32))
    interim: bool = False
    raw: dict = field(default_factory=dict)
    combiners: dict = field(default_factory=dict)  # alternative combiners by name (bundle.json "combiners")

    @classmethod
    def read(cls, folder: str | Path) -> BundleSpec:
        folder = Path(folder)
        meta = folder / BUNDLE_FILE
        if not folder.is_dir() or not meta.is_file():
            raise BundleError(f"{folder} is not a model bundle (no {BUNDLE_FILE} inside)")
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{meta} is not valid JSON: {exc}") from None
        try:
            return cls._parse(folder, meta, d)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{meta} is damaged: {what}") from None

    @classmethod
    def _parse(cls, folder: Path, meta: Path, d) -> BundleSpec:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{meta} is not an rtfer bundle (format field is {d.get('format') if isinstance(d, dict) else None!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise BundleError(f"{meta} has format_version {d['format_version']}; this rtfer reads up to {FORMAT_VERSION}")
        classes = tuple(d.get("classes", CLASSES))
        if classes != CLASSES:
            raise BundleError(f"bundle class order {list(classes)} differs from the canonical {list(CLASSES)}")
        members = [MemberSpec.from_dict(m) for m in d.get("members", [])]
        if not members:
            raise BundleError(f"{meta} lists no members")
        for m in members:  # every file bundle.json names stays inside the folder: checked before anything is opened
            confined(folder, m.file, f"member {m.name} file")
            if m.int8.get("file"):
                confined(folder, str(m.int8["file"]), f"member {m.name} int8.file")
        confusion = (d.get("metrics") or {}).get("confusion_png") if isinstance(d.get("metrics"), dict) else None
        if confusion:
            confined(folder, str(confusion), "metrics.confusion_png")
        for m in members:
            if not (folder / m.file).is_file():
                raise BundleError(f"bundle member file {m.file} is missing from {folder}")
        template = np.asarray(d.get("alignment", {}).get("template", ARCFACE_TEMPLATE), np.float32)
        if template.shape != (5, 2):
            raise BundleError(f"alignment template must be 5 points, got shape {template.shape}")
        spec = cls(path=folder, name=str(d.get("name", folder.name)), version=str(d.get("version", "0")),
                   members=members, ensemble=dict(d.get("ensemble", {"method": "soft_vote"})),
                   temperature=float(d.get("temperature", 1.0)), classes=classes, alignment_template=template,
                   interim=bool(d.get("interim", False)), raw=d, combiners=dict(d.get("combiners") or {}))
        make_ensemble(spec.ensemble, len(members), spec.temperature)  # validate early
        for cname, c in spec.combiners.items():
            if cname == DEFAULT_COMBINER:
                raise BundleError(f"{meta}: a combiner may not be called {DEFAULT_COMBINER!r} (the bundle's own)")
            make_ensemble(c, len(members), float(c.get("temperature", 1.0)))
            if not isinstance(c.get("tta_flip", False), bool):
                raise BundleError(f"{meta}: combiner {cname!r} tta_flip must be true or false")
            spec.posterior_shift(cname)  # validate early
        return spec

    def posterior_shift(self, name: str = DEFAULT_COMBINER) -> np.ndarray | None:
        """The named combiner's ``posterior_shift`` (7 log-probability offsets that take its output back to the
        validation data's class frequencies; valence is computed through it), or None (the bundle's own combiner,
        whose output already has them)."""
        if not name or name == DEFAULT_COMBINER:
            return None
        c, _ = self.combiner(name)
        if c.get("posterior_shift") is None:
            return None
        try:
            shift = np.asarray(c["posterior_shift"], np.float64)
        except (TypeError, ValueError):
            shift = None
        if shift is None or shift.shape != (NUM_CLASSES,) or not np.all(np.isfinite(shift)):
            raise BundleError(f"{self.path / BUNDLE_FILE}: combiner {name!r} posterior_shift must be {NUM_CLASSES} "
                              "finite numbers")
        return shift

    def combiner(self, name: str = DEFAULT_COMBINER) -> tuple[dict, float]:
        """(ensemble object, temperature) of the named combiner: "default" is the bundle's own (``ensemble``),
        others come from bundle.json ``combiners`` (e.g. "balanced": class-balanced stacking)."""
        if not name or name == DEFAULT_COMBINER:
            return self.ensemble, self.temperature
        if name not in self.combiners:
            have = ", ".join([DEFAULT_COMBINER, *self.combiners])
            raise BundleError(f"bundle {self.name} has no combiner {name!r} (it has: {have})")
        c = self.combiners[name]
        return c, float(c.get("temperature", 1.0))

    @property
    def detector(self) -> str | None:
        """The detector whose landmarks the alignment template was fitted to (bundle.json ``alignment.detector``);
        None when the bundle does not tie itself to one (e.g. the generic ArcFace template)."""
        name = (self.raw.get("alignment") or {}).get("detector")
        return str(name) if name else None

    def verify(self) -> None:
        """Check every member's sha256 (and its INT8 file's, where present) against bundle.json."""
        for m in self.members:
            if m.sha256 and sha256_file(self.path / m.file) != m.sha256:
                raise BundleError(f"bundle member {m.file} does not match its sha256 in {BUNDLE_FILE}")
            q = m.int8
            if q.get("file") and q.get("sha256") and (self.path / q["file"]).is_file() \
                    and sha256_file(self.path / q["file"]) != q["sha256"]:
                raise BundleError(f"bundle INT8 member {q['file']} does not match its sha256 in {BUNDLE_FILE}")

    @property
    def int8(self) -> dict:
        """bundle.json ``quantization.int8``: how the INT8 members were made and what they measured ({} if none)."""
        return dict((self.raw.get("quantization") or {}).get("int8") or {})

    def int8_status(self) -> tuple[bool, bool, str]:
        """(usable, accepted, why not): INT8 files exist for every member and were made from the current FP files;
        accepted = they passed the accuracy gate when quantised (``python -m rtfer.training quantize``)."""
        for m in self.members:
            q = m.int8
            if not q.get("file"):
                return False, False, f"member {m.name} has no INT8 file"
            if not (self.path / q["file"]).is_file():
                return False, False, f"INT8 file {q['file']} is missing"
            if q.get("from_sha256") and m.sha256 and q["from_sha256"] != m.sha256:
                return False, False, f"INT8 file {q['file']} was made from another version of {m.file} (stale)"
        return True, bool(self.int8.get("accepted")), ""


def confined(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` for a file that bundle.json names, refused (:class:`BundleError`) unless it is a plain
    relative path that stays inside the bundle folder: no absolute path, no ``..``, no symlink that leads out.
    Checked when bundle.json is parsed, before any member file is opened."""
    meta = folder / BUNDLE_FILE
    text = str(name)
    pure = Path(text)
    if not text or "\0" in text or pure.is_absolute() or text.startswith(("/", "\\")) or pure.drive \
            or re.match(r"^[A-Za-z]:", text) or ".." in re.split(r"[\\/]", text):
        raise BundleError(f"{meta}: {what} {text!r} must be a file name inside the bundle folder "
                          "(no absolute path, no '..')")
    try:
        root = folder.resolve()
        target = (folder / pure).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"{meta}: {what} {text!r} cannot be resolved ({exc})") from None
    if target != root and root not in target.parents:
        raise BundleError(f"{meta}: {what} {text!r} leads outside the bundle folder (to {target}); refused")
    return folder / pure


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle_json(folder: str | Path, meta: dict) -> Path:
    """Write bundle.json, filling format fields and member hashes."""
    folder = Path(folder)
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("classes", list(CLASSES))
    for m in meta["members"]:
        m["sha256"] = sha256_file(folder / m["file"])
        if (m.get("int8") or {}).get("file") and (folder / m["int8"]["file"]).is_file():
            m["int8"]["sha256"] = sha256_file(folder / m["int8"]["file"])
    out = folder / BUNDLE_FILE
    out.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    BundleSpec.read(folder)  # round-trip validation
    return out


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    builtin = builtin_bundles_dir() / str(name_or_path)
    if builtin.is_dir():
        return builtin
    available = sorted(x.name for x in builtin_bundles_dir().glob("*") if (x / BUNDLE_FILE).is_file()) \
        if builtin_bundles_dir().is_dir() else []
    raise BundleError(f"no bundle named or at {str(name_or_path)!r} (built-in bundles: {', '.join(available) or 'none'})")


#: ``--precision`` choices. ``auto``: INT8 on onnxruntime/CPU when the bundle has accepted INT8 members, else the
#: backend's own (TensorRT FP16 engines, torch FP16 autocast on CUDA, FP32 arithmetic on onnxruntime and torch CPU).
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def backend_precision(backend: str, device: str) -> str:
    """The precision a backend runs when none is asked for (what ``--precision auto`` means without INT8)."""
    import os

    from rtfer.devices import parse_device

    kind = parse_device(device).kind
    if backend == "tensorrt":
        return os.environ.get("RTFER_TRT_PRECISION", "fp16")
    if backend == "torch" and kind == "cuda":
        return "fp16"
    return "fp32"  # onnxruntime computes FP16-stored weights in FP32


def resolve_precision(requested: str, spec: BundleSpec, backend: str, device: str) -> str:
    """Turn ``--precision`` into what runs: ``int8`` only on onnxruntime on the CPU and only with INT8 member files;
    ``auto`` takes INT8 there when the bundle accepted it (val accuracy gate), else the backend's own precision."""
    from rtfer.devices import parse_device
    from rtfer.errors import BackendError

    if requested not in PRECISIONS:
        raise BundleError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cpu_ort = backend == "onnxruntime" and parse_device(device).kind == "cpu"
    usable, accepted, why = spec.int8_status()
    if requested == "int8":
        if not cpu_ort:
            raise BackendError(f"--precision int8 runs on onnxruntime on the CPU only, not {backend} on {device}")
        if not usable:
            raise BundleError(f"bundle {spec.name} has no usable INT8 members ({why}); make them with "
                              "`python -m rtfer.training quantize BUNDLE --calib VAL`")
        if not accepted:
            log.warning("bundle %s: its INT8 members did not pass the accuracy gate (%s); running them as asked",
                        spec.name, spec.int8.get("reason", "see bundle.json quantization.int8"))
        return "int8"
    if requested == "auto":
        if cpu_ort and usable and accepted:
            log.info("precision auto: int8 (bundle %s has accepted INT8 members)", spec.name)
            return "int8"
        if cpu_ort and spec.int8 and not usable:
            log.warning("bundle %s: INT8 members not used: %s", spec.name, why)
        return backend_precision(backend, device)
    if requested == "fp16" and backend == "onnxruntime":
        log.info("precision fp16 on onnxruntime: FP16-stored weights, FP32 arithmetic (no FP16 kernels on CPU)")
    return requested


def preprocess(crops: np.ndarray, member: MemberSpec) -> np.ndarray:
    """(n, S, S, 3) uint8 RGB crops -> (n, 3, s, s) float32 normalised as the member was trained."""
    import cv2

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"faces must be (n, S, S, 3) uint8 RGB crops, got shape {crops.shape}")
    if crops.dtype != np.uint8:  # floats in 0..1 (or NaN) would be read as near-black faces, with a confident answer
        raise ValueError(f"faces must be uint8 RGB crops (values 0-255), got {crops.dtype}; convert with "
                         "(x * 255).round().astype(np.uint8) from floats in 0..1")
    size = member.input_size
    if crops.shape[1] != size:
        interp = cv2.INTER_AREA if crops.shape[1] > size else cv2.INTER_LINEAR
        crops = np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in crops]) if len(crops) else \
            np.zeros((0, size, size, 3), np.uint8)
    x = crops.astype(np.float32) * (1.0 / 255.0)
    if member.color == "gray":
        g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        x = np.repeat(g[..., None], 3, axis=-1)
    x = (x - np.asarray(member.mean, np.float32)) / np.asarray(member.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Bundle:
    """A loaded bundle: member backends plus the ensemble. ``predict`` is the public entry point."""

    def __init__(self, spec: BundleSpec, backend: str = "auto", device: str = "auto", *,
                 allow_fallback: bool = False, max_batch: int = 64, precision: str = "auto",
                 combiner: str = DEFAULT_COMBINER) -> None:
        self.spec = spec
        ens, temperature = spec.combiner(combiner)  # an unknown name fails before any model loads
        self.combiner = combiner or DEFAULT_COMBINER
        self.backend_name, self.device = backends.resolve(backend, device, allow_fallback)
        self.precision = resolve_precision(precision, spec, self.backend_name, self.device)
        self.members = spec.members
        self.backends = [backends.create_backend(self.backend_name, spec.path / self.member_file(m),
                                                 device=self.device, member=m.to_dict(), allow_fallback=allow_fallback,
                                                 max_batch=max_batch, precision=self.member_precision(m))
                         for m in spec.members]
        self.ensemble: Ensemble = make_ensemble(ens, len(spec.members), temperature)
        self.posterior_shift = spec.posterior_shift(self.combiner)
        # A combiner fitted on flip-TTA outputs (bundle.json combiners.NAME.tta_flip) has every member read each
        # crop and its mirror image too: twice the classifier cost.
        self.tta_flip = bool(ens.get("tta_flip", False))
        log.info("bundle %s %s: %d members on %s%s", spec.name, spec.version, len(self.members),
                 self.backends[0].describe(),
                 "" if self.combiner == DEFAULT_COMBINER else f", combiner {self.combiner}")

    def member_file(self, member: MemberSpec) -> str:
        """The ONNX file that runs for ``member`` at this bundle's precision (under INT8, a member where INT8 did not
        pay keeps its FP file: ``"kept_fp"`` in its ``int8`` entry)."""
        return member.int8["file"] if self.precision == "int8" else member.file

    def member_precision(self, member: MemberSpec) -> str:
        """What ``member`` runs at: the bundle's precision, except FP for an INT8 bundle's kept-FP member."""
        return "fp32" if self.precision == "int8" and member.int8.get("kept_fp") else self.precision

    @property
    def input_sizes(self) -> list[int]:
        """The sizes the runtime aligns faces at, one per member (a member's ``align_size``, else its input)."""
        return [m.crop_size for m in self.members]

    @property
    def alignment_template(self) -> np.ndarray:
        return self.spec.alignment_template

    def describe(self) -> str:
        return f"{self.spec.name} {self.spec.version} ({self.backends[0].describe()})"

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        for b in self.backends:
            b.warmup(batch_sizes)

    def member_probs(self, crops_by_size: dict[int, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Per-member probabilities (n, 7). ``crops_by_size`` maps an input size to crops aligned at that size
        (the pipeline aligns once per size); a single array is resized per member. Members that preprocess alike
        (same crops, size, colour mode, mean and std) share one preprocessed batch."""
        out = []
        prepared: dict[tuple, np.ndarray] = {}
        for m, b in zip(self.members, self.backends):
            crops = crops_by_size.get(m.crop_size, next(iter(crops_by_size.values()))) \
                if isinstance(crops_by_size, dict) else crops_by_size
            key = (id(crops), m.input_size, m.color, tuple(m.mean), tuple(m.std))
            x = prepared.get(key)
            if x is None:
                x = prepared[key] = preprocess(crops, m)
            logits = b.infer(x)
            if m.tta_flip or self.tta_flip:  # the mirror image's logits, averaged (as in training's flip TTA)
                logits = (logits + b.infer(np.ascontiguousarray(x[..., ::-1]))) / 2
            if logits.shape[1] != NUM_CLASSES:
                raise BundleError(f"member {m.name} returns {logits.shape[1]} outputs, expected {NUM_CLASSES}")
            out.append(softmax(logits, m.temperature))
        return out

    def combine(self, member_probs: list[np.ndarray]) -> np.ndarray:
        if len(member_probs[0]) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        return self.ensemble(member_probs).astype(np.float32)

    def align(self, image_bgr: np.ndarray, faces) -> dict[int, np.ndarray]:
        """Align the faces of one BGR image exactly as the runtime does: one set of crops per member input size,
        warped with the bundle's alignment template. ``faces``: a :class:`rtfer.types.Faces` (from a detector) or
        landmarks (n, 5, 2) in image pixels. Returns {input size: (n, size, size, 3) uint8 RGB}, which
        :meth:`predict` takes as is; ``predict(bundle.align(image, faces))`` gives the CLI's ``raw_`` columns."""
        from rtfer.detection.align import align_faces

        landmarks = np.asarray(getattr(faces, "landmarks", faces), np.float32).reshape(-1, 5, 2)
        return {size: align_faces(image_bgr, landmarks, size, self.alignment_template)[0]
                for size in sorted(set(self.input_sizes))}

    def predict(self, faces: np.ndarray | dict[int, np.ndarray]) -> np.ndarray:
        """Aligned face crops -> (n, 7) float32 probabilities. ``faces``: what :meth:`align` returns (the runtime's
        crops, the CLI's answer), or one array (n, S, S, 3) uint8 RGB of any S, resized to each member's input size.
        A crop aligned at another size and resized is not pixel-identical to one aligned at the member's size, and
        the members are sensitive to such resampling (on fixture faces 112 px crops moved the probabilities by 0.03
        on average, up to 0.5), so this logs a warning once; use :meth:`align` for the CLI's numbers."""
        if not isinstance(faces, dict):
            size = int(np.shape(faces)[1]) if np.ndim(faces) == 4 else 0
            if size and size not in self.input_sizes and not getattr(self, "_warned_resize", False):
                self._warned_resize = True
                log.warning("predict: %d px crops are resized to the members' %s px; the answer differs from the "
                            "CLI's, which aligns at each member's size (bundle.align(image, faces))", size,
                            "/".join(str(s) for s in sorted(set(self.input_sizes))))
        return self.combine(self.member_probs(faces))


def load_bundle(name_or_path: str | Path = "default", backend: str = "auto", device: str = "auto", *,
                allow_fallback: bool = False, max_batch: int = 64, verify: bool = True,
                precision: str = "auto", combiner: str = DEFAULT_COMBINER) -> Bundle:
    """Load a bundle by built-in name ("default") or folder path, on the chosen backend, device and precision
    (see :data:`PRECISIONS`), combining its members with the named combiner (:meth:`BundleSpec.combiner`)."""
    spec = BundleSpec.read(resolve_bundle_path(name_or_path))
    if verify:
        spec.verify()
    if spec.interim:
        log.info("bundle %s is an interim model (trained with a reduced recipe)", spec.name)
    return Bundle(spec, backend, device, allow_fallback=allow_fallback, max_batch=max_batch, precision=precision,
                  combiner=combiner)
