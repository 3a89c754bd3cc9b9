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

Modules, one per job, each importing only those before it: :mod:`~rtfer.adapt.examples` (collecting the labelled
faces), :mod:`~rtfer.adapt.features` (member heads and embeddings), :mod:`~rtfer.adapt.fitting` (the candidate fits),
:mod:`~rtfer.adapt.crossval` (folds, held-out scores, choosing a candidate) and :mod:`~rtfer.adapt.writer` (writing
and verifying the bundle); this package holds :func:`adapt` and re-exports their public names. To replace a function
for a test, patch it in the module that calls it (e.g. ``rtfer.adapt.crossval.candidate_fitters``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from rtfer.adapt.crossval import (AdaptResult, Scores, bundle_hash, cross_fit_temperature, cross_validate,
                                  grouped_folds, run_adaptation)
from rtfer.adapt.examples import (ALIASES, CROP_MAX_ASPECT, CROP_MAX_SIDE, FEW_FACES, Examples, accepted_names,
                                  class_for_folder, collect_examples, looks_like_crop)
from rtfer.adapt.features import Head, MemberFeatures, find_head, member_features
from rtfer.adapt.fitting import FINETUNE_STRENGTHS, Params, base_params, blas_single_thread, candidate_fitters, nll
from rtfer.adapt.writer import check_output, write_adapted_bundle
from rtfer.bundle import BundleSpec, resolve_bundle_path

log = logging.getLogger(__name__)


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
    with blas_single_thread():
        result = run_adaptation(spec, ex, folds=folds, seed=seed, method=method)
        if result.improved:
            write_adapted_bundle(result, out_path, overwrite=overwrite, name=name)
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["ALIASES", "CROP_MAX_ASPECT", "CROP_MAX_SIDE", "FEW_FACES", "FINETUNE_STRENGTHS", "AdaptResult", "Examples",
           "Head", "MemberFeatures", "Params", "Scores", "accepted_names", "adapt", "base_params", "blas_single_thread",
           "bundle_hash", "candidate_fitters", "check_output", "class_for_folder", "collect_examples",
           "cross_fit_temperature", "cross_validate", "find_head", "grouped_folds", "looks_like_crop",
           "member_features", "nll", "run_adaptation", "write_adapted_bundle"]
