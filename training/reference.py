"""Import checkpoints from the DDAMFN reference repository (SainingZhang/DDAMFN).

- ``load_reference_ddamfn``: a trained DDAMFN checkpoint -> our ``ddamfn`` module with the classifier rows moved
  from the reference class order (Neutral, Happy, Sad, Surprise, Fear, Disgust, Angry) to the canonical order.
- ``load_mfn_pretrained``: the MS-Celeb MixedFeatureNet (MFN_msceleb.pth) -> DDAMFN's backbone, for training.
- ``bundle_from_reference``: a trained checkpoint -> a single-member bundle.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtfer.labels import CLASSES, DDAMFN_REFERENCE_ORDER, permutation
from rtfer.models import create_model
from rtfer.models.ddamfn import load_mfn_backbone, read_state_dict, state_dict_of, strip_prefixes

log = logging.getLogger(__name__)

#: Per-class tensors of the reference head (fc rows and the unused BatchNorm1d over the logits).
CLASS_ROW_KEYS = ("fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


class _AnyModule(nn.Module):
    """Stand-in for the reference's pickled module classes: unpickling restores their parameters and children."""

    def forward(self, *args):  # pragma: no cover - never called
        raise RuntimeError("placeholder module from a pickled reference checkpoint")


def _reference_unpickler():
    """A pickle module for torch.load that maps the reference repo's classes (networks.*) onto _AnyModule."""
    import pickle
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.split(".")[0] in ("networks", "MixedFeatureNet", "DDAM", "__main__"):
                return _AnyModule
            return super().find_class(module, name)

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="rtfer_reference_pickle")


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint. Plain tensor files load safely; a pickled module (the reference's MFN_msceleb.pth)
    needs ``trust_pickle=True``, because unpickling runs code from the file: pass it only for files you trust."""
    try:
        return read_state_dict(path)
    except ValueError:
        if not trust_pickle:
            raise
    log.warning("unpickling %s with full pickle because trust_pickle is set: this runs code from the file", path)
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_reference_unpickler())
    state = state_dict_of(obj)
    if state is None:
        raise ValueError(f"{Path(path).name} holds no recognisable state dict (got {type(obj).__name__})")
    return state


def reorder_class_rows(state: dict, from_order=DDAMFN_REFERENCE_ORDER, to_order=CLASSES) -> dict:
    """Permute the per-class rows (axis 0) of the classifier tensors from ``from_order`` into ``to_order``."""
    perm = torch.from_numpy(permutation(from_order, to_order))
    out = dict(state)
    for key in CLASS_ROW_KEYS:
        if key in out:
            if out[key].shape[0] != len(perm):
                raise ValueError(f"{key} has {out[key].shape[0]} rows, expected {len(perm)} classes")
            out[key] = out[key].index_select(0, perm)
    return out


def load_reference_ddamfn(ckpt_path: str | Path, *, num_head: int | None = None,
                          architecture: str = "ddamfn", trust_pickle: bool = False) -> nn.Module:
    """A reference DDAMFN checkpoint ({"model_state_dict": ...}, a plain state dict, "module." prefixes) as our
    ``ddamfn`` (112 px, canonical class order), in eval mode. ``architecture`` picks another registered DDAMFN
    variant with the same key layout (``ddamfn_tiny`` for tests)."""
    state = strip_prefixes(read_checkpoint(ckpt_path, trust_pickle))
    heads = num_head or len({k.split(".")[0] for k in state if k.startswith("cat_head")}) or 2
    if "fc.weight" not in state:
        raise ValueError(f"{Path(ckpt_path).name} is not a DDAMFN checkpoint (no fc.weight)")
    n_classes = int(state["fc.weight"].shape[0])
    if n_classes != len(CLASSES):
        raise ValueError(f"{Path(ckpt_path).name} has {n_classes} classes; only 7-class (RAF-DB / AffectNet-7) "
                         "checkpoints map onto the canonical classes")
    model = create_model(architecture, num_classes=n_classes, num_head=heads, input_size=112)
    state = reorder_class_rows(state)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{Path(ckpt_path).name} does not fit DDAMFN: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    log.info("loaded reference DDAMFN %s (%d heads); classifier rows reordered to %s", Path(ckpt_path).name, heads,
             ", ".join(CLASSES))
    return model.eval()


def load_mfn_pretrained(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> dict[str, list[str]]:
    """Load the MS-Celeb MixedFeatureNet weights into ``model``'s backbone (MFN_msceleb.pth is a pickled module:
    ``trust_pickle=True`` to read it).

    Returns {"missing": backbone keys not in the file, "unexpected": file keys not used (the embedding tail)},
    and logs both; a shape mismatch raises ValueError.
    """
    missing, unexpected = load_mfn_backbone(model, read_checkpoint(path, trust_pickle))
    if missing:
        log.warning("MixedFeatureNet weights: %d backbone tensors missing, e.g. %s", len(missing), missing[:3])
    if unexpected:
        log.info("MixedFeatureNet weights: %d tensors unused (%s)", len(unexpected),
                 ", ".join(sorted({k.split(".")[0] for k in unexpected})))
    return {"missing": missing, "unexpected": unexpected}


def bundle_from_reference(ckpt: str | Path, out_folder: str | Path, *, name: str = "ddamfn-reference",
                          version: str = "reference", parity_images: np.ndarray | None = None,
                          metrics: dict | None = None, architecture: str = "ddamfn",
                          trust_pickle: bool = False) -> Path:
    """A single-member bundle (soft vote of one) from a reference DDAMFN checkpoint."""
    from rtfer.training.export import write_bundle

    model = load_reference_ddamfn(ckpt, architecture=architecture, trust_pickle=trust_pickle)
    return write_bundle(out_folder, [{"model": model, "name": "ddamfn"}], {"method": "soft_vote", "weights": [1.0]},
                        name=name, version=version, interim=False,
                        training={"source": "SainingZhang/DDAMFN reference checkpoint", "checkpoint": Path(ckpt).name},
                        metrics=dict(metrics or {}), parity_images=parity_images)
