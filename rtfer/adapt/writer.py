"""Writing the adapted bundle: the output checked before any work, each member's ONNX file with its adapted last
layer, bundle.json with the adaptation block, all in a temporary folder verified and then renamed into place."""
from __future__ import annotations

import copy
import datetime
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rtfer.adapt.crossval import AdaptResult, bundle_hash
from rtfer.adapt.features import Head
from rtfer.adapt.fitting import Params
from rtfer.bundle import BUNDLE_FILE, BundleSpec, sha256_file
from rtfer.errors import BundleError, OutputError

log = logging.getLogger(__name__)

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
