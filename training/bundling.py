"""From training runs to a bundle: member checkpoints + the fitted ensemble -> rtfer.training.export.write_bundle.

Gathers what bundle.json records about training (recipe per member, data, wall time) and the measured validation
metrics (per member and for the ensemble), and uses real validation crops for the ORT-vs-torch parity check.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from rtfer.errors import InputError

log = logging.getLogger(__name__)


def parity_crops(source: str | Path | None, count: int = 32, seed: int = 0) -> np.ndarray | None:
    """Up to ``count`` uint8 RGB crops (n, S, S, 3) from a packed .npz or an image-class folder."""
    if not source:
        return None
    from rtfer.training.data import load_split

    data = load_split(str(source))
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=min(count, len(data)), replace=False))
    imgs = data.images[idx]
    return np.repeat(imgs, 3, axis=-1) if imgs.shape[-1] == 1 else imgs


def _run_summary(run_dir: Path) -> dict:
    """Recipe and wall time of a run, from its config.yaml and metrics.jsonl."""
    import yaml

    summary: dict = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        summary["config"] = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    log_path = run_dir / "metrics.jsonl"
    if log_path.is_file():
        rows = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines() if x]
        if rows:
            summary["epochs_run"] = rows[-1]["epoch"]
            summary["best_epoch"] = rows[-1]["best_epoch"]
            summary["wall_minutes"] = round(sum(r["epoch_seconds"] for r in rows) / 60, 1)
    return summary


def export_bundle(checkpoints: list[str | Path], out: str | Path, *, ensemble_json: str | Path, name: str = "default",
                  version: str = "0.1.0", interim: bool = False, alignment_template=None, alignment: dict | None = None,
                  parity_images: str | Path | np.ndarray | None = None, member_names: list[str] | None = None,
                  training_extra: dict | None = None, parity_tol: float | None = None, tta_flip: bool = False,
                  align_size: int = 0) -> Path:
    """Write a bundle folder for the member checkpoints (``best.pt`` of each run) and the fitted ensemble.

    ``align_size`` (px, 0 = off): members whose input is larger align faces at this size and upsample them to their
    input at run time (bundle.json ``align_size``), as they were trained on FER2013's 48 px faces upsampled.

    ``parity_tol`` is passed to write_bundle (its per-member ONNX-vs-torch tolerance, relative to the logit scale,
    which includes random input). Afterwards the whole bundle is checked end to end on the real crops: bundle
    probabilities (onnxruntime) against the checkpoints' torch probabilities combined by the same ensemble; the
    result goes into bundle.json ``metrics.end_to_end_parity``.
    """
    from rtfer.training.export import write_bundle
    from rtfer.training.train import load_checkpoint

    ens_path = Path(ensemble_json)
    if not ens_path.is_file():
        raise InputError(f"ensemble file {ens_path} does not exist (run `python -m rtfer.training fit-stacker` first)")
    fit = json.loads(ens_path.read_text(encoding="utf-8"))
    if len(fit["member_names"]) != len(checkpoints):
        raise InputError(f"the ensemble was fitted on {len(fit['member_names'])} members but {len(checkpoints)} "
                         "checkpoints were given")
    names = member_names or fit["member_names"]
    members, runs = [], {}
    for ckpt_path, mname, temp in zip(checkpoints, names, fit["member_temperatures"]):
        model, ckpt = load_checkpoint(ckpt_path)
        members.append({"model": model, "name": mname, "architecture": ckpt["architecture"],
                        "arch_kwargs": ckpt.get("arch_kwargs", {}), "temperature": float(temp), "tta_flip": tta_flip})
        runs[mname] = {"architecture": ckpt["architecture"], "arch_kwargs": ckpt.get("arch_kwargs", {}),
                       "selected_epoch": ckpt.get("epoch"), **_run_summary(Path(ckpt_path).parent)}
    crops = parity_images if isinstance(parity_images, np.ndarray) else parity_crops(parity_images)
    metrics = dict(fit["metrics"])
    metrics["members"] = {new: metrics["members"][old] for new, old in zip(names, fit["member_names"])}
    metrics["ablation"] = fit["ablation"]
    training = {"members": runs, "ensemble_method": fit["chosen"], "ensemble_selected_by": fit["metric"],
                **dict(training_extra or {})}
    kw = {} if parity_tol is None else {"parity_tol": float(parity_tol)}
    folder = write_bundle(out, members, fit["ensemble"], name=name, version=version, interim=interim,
                          alignment_template=alignment_template, alignment=alignment, training=training, metrics=metrics,
                          parity_images=crops, temperature=float(fit["temperature"]), **kw)
    from rtfer.bundle import BUNDLE_FILE, write_bundle_json

    meta = json.loads((Path(folder) / BUNDLE_FILE).read_text(encoding="utf-8"))
    if crops is not None:
        meta["metrics"]["end_to_end_parity"] = end_to_end_parity(folder, checkpoints, crops, fit, tta_flip=tta_flip)
    if align_size:
        for m in meta["members"]:
            if int(m["input_size"]) > int(align_size):
                m["align_size"] = int(align_size)
    if fit.get("alternatives"):  # alternative combiners (rtfer analyze --combiner NAME)
        meta["combiners"] = fit["alternatives"]
    confusion = ens_path.parent / "confusion.png"
    if confusion.is_file():  # the ensemble's validation confusion matrix travels with the bundle (rtfer info)
        shutil.copyfile(confusion, Path(folder) / "confusion.png")
        meta["metrics"]["confusion_png"] = "confusion.png"
    write_bundle_json(folder, meta)
    return folder


def end_to_end_parity(folder: str | Path, checkpoints: list[str | Path], crops: np.ndarray, fit: dict,
                      max_prob_diff: float = 1e-2, min_agreement: float = 0.99, tta_flip: bool = False) -> dict:
    """Bundle (onnxruntime) vs checkpoints (torch) + ensemble on real crops; raises BundleError when they differ."""
    import rtfer
    from rtfer.ensemble import make_ensemble
    from rtfer.errors import BundleError

    got = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").predict(crops)
    want = make_ensemble(fit["ensemble"], len(checkpoints), fit["temperature"])(
        torch_member_probs(checkpoints, crops, fit["member_temperatures"], tta_flip=tta_flip))
    result = {"n": int(len(crops)), "max_prob_diff": float(np.abs(got - want).max()),
              "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean())}
    log.info("bundle vs training checkpoints on %d real crops: max |p diff| %.2e, top-1 agreement %.3f",
             result["n"], result["max_prob_diff"], result["top1_agreement"])
    if result["max_prob_diff"] > max_prob_diff or result["top1_agreement"] < min_agreement:
        raise BundleError(f"bundle {folder} does not reproduce its checkpoints on real images: {result}")
    return result


def torch_member_probs(checkpoints: list[str | Path], crops: np.ndarray,
                       temperatures: list[float] | None = None, tta_flip: bool = False) -> list[np.ndarray]:
    """Member probabilities computed in torch from the training checkpoints, with the runtime's preprocessing
    (uint8 RGB crops -> rtfer.bundle.preprocess): what an exported bundle must reproduce."""
    import torch

    from rtfer.bundle import MemberSpec, preprocess
    from rtfer.ensemble import softmax
    from rtfer.training.train import load_checkpoint, preprocessing

    out = []
    for i, path in enumerate(checkpoints):
        model, _ = load_checkpoint(path)
        size, mean, std, gray = preprocessing(model)
        spec = MemberSpec(name="m", file="", architecture="", input_size=size, mean=mean, std=std,
                          color="gray" if gray else "rgb")
        with torch.no_grad():
            x = torch.from_numpy(preprocess(crops, spec))
            logits = model(x).numpy()
            if tta_flip:
                logits = (logits + model(torch.flip(x, dims=[3])).numpy()) / 2
        out.append(softmax(logits, temperatures[i] if temperatures else 1.0))
    return out


def set_combiners(bundle: str | Path, ensemble_json: str | Path) -> list[str]:
    """Copy the alternative combiners of ``ensemble_json`` (fit-stacker's output) into an existing bundle's
    bundle.json ``combiners``, replacing any there (flip combiners, :func:`set_flip_combiners`, are kept). The fit must
    be the one the bundle was exported from: the same number of members and the same default combiner; anything else
    was fitted on other members' outputs and would combine the wrong probabilities. Returns the combiner names now in
    the bundle."""
    from rtfer.bundle import BundleSpec, resolve_bundle_path
    from rtfer.errors import BundleError

    spec = BundleSpec.read(resolve_bundle_path(bundle))
    ens_path, fit = _read_fit(ensemble_json)
    # bundle.json's ensemble was written from this very fit: JSON round-trips floats exactly, so it compares equal
    if len(fit["member_names"]) != len(spec.members) or fit["ensemble"] != spec.ensemble \
            or float(fit["temperature"]) != spec.temperature:
        raise BundleError(f"{ens_path} was not fitted on bundle {spec.name}'s members (its default combiner differs "
                          "from the bundle's)")
    kept = {n: c for n, c in spec.combiners.items() if c.get("tta_flip")}
    return _write_combiners(spec, {**dict(fit.get("alternatives") or {}), **kept})


def set_flip_combiners(bundle: str | Path, ensemble_json: str | Path) -> list[str]:
    """Give an existing bundle combiners that read each face and its mirror image (flip TTA): ``flip`` (the fit's
    chosen combiner) and ``flip_NAME`` for each of its alternatives, all with ``tta_flip: true``, replacing the
    bundle's earlier flip combiners. ``ensemble_json`` is fit-stacker's output for the bundle's own members' flip-TTA
    validation outputs (``member-logits BUNDLE --tta-flip``): the same member names and temperatures, and runs whose
    val.json says ``tta_flip``. Returns the combiner names now in the bundle."""
    from rtfer.bundle import BundleSpec, resolve_bundle_path
    from rtfer.errors import BundleError

    spec = BundleSpec.read(resolve_bundle_path(bundle))
    ens_path, fit = _read_fit(ensemble_json)
    names = [m.name for m in spec.members]
    temps = [m.temperature for m in spec.members]
    if list(fit.get("member_names") or []) != names or \
            [float(t) for t in fit.get("member_temperatures") or []] != temps:
        raise BundleError(f"{ens_path} was not fitted on bundle {spec.name}'s members {names} at their temperatures "
                          "(fit-stacker on the folders of member-logits BUNDLE --tta-flip)")
    for run in fit.get("runs") or []:
        if not _is_flip_run(run):
            raise BundleError(f"{ens_path} was fitted on {run}, whose outputs are not flip-TTA ones "
                              "(member-logits BUNDLE --tta-flip writes them)")
    flip = {"flip": {**fit["ensemble"], "temperature": float(fit["temperature"]), "fitted_as": fit.get("chosen", ""),
                     "metrics": {k: v for k, v in ((fit.get("metrics") or {}).get("ensemble") or {}).items()
                                 if k not in ("confusion", "method", "temperature")}, "tta_flip": True}}
    for n, c in (fit.get("alternatives") or {}).items():
        flip[f"flip_{n}"] = {**c, "tta_flip": True}
    kept = {n: c for n, c in spec.combiners.items() if not c.get("tta_flip")}
    return _write_combiners(spec, {**kept, **flip})


def set_tilted_combiner(bundle: str | Path, base: str, runs: list[str | Path], train: str | Path) -> tuple[str, dict]:
    """Give an existing bundle a combiner that is ``base`` (``default``, ``flip``, ...) tilted towards the rare
    classes: ``class_bias = -alpha * log(prior)``, the training split's class frequencies ``prior``, alpha from
    :func:`rtfer.training.stacker.fit_prior_tilt` on ``base``'s output for the members' validation outputs in ``runs``
    (one folder per member, in order, from ``member-logits``; flip ones for a flip base). Its ``posterior_shift`` takes
    its output back to real class frequencies for valence, as for ``balanced``. Named ``tilted`` (base ``default``)
    or ``BASE_tilted``; replaces an earlier one. Returns (name, its validation metrics)."""
    from rtfer.bundle import DEFAULT_COMBINER, BundleSpec, resolve_bundle_path
    from rtfer.ensemble import make_ensemble
    from rtfer.errors import BundleError
    from rtfer.labels import NUM_CLASSES
    from rtfer.training.data import load_split
    from rtfer.training.stacker import fit_posterior_shift, fit_prior_tilt

    spec = BundleSpec.read(resolve_bundle_path(bundle))
    c_base, temperature = spec.combiner(base)
    if c_base.get("class_bias") is not None:
        raise BundleError(f"combiner {base!r} of bundle {spec.name} is tilted already")
    flip = bool(c_base.get("tta_flip", False))
    members, labels, said = _member_outputs(spec, runs)
    if said != flip:
        raise BundleError(f"combiner {base!r} {'reads' if flip else 'does not read'} the mirror image, but each run "
                          f"holds {'flip-TTA' if said else 'plain'} outputs (member-logits BUNDLE"
                          f"{' --tta-flip' if flip else ''})")
    counts = np.bincount(load_split(train).labels, minlength=NUM_CLASSES).astype(np.float64)
    if np.any(counts == 0):
        raise InputError(f"{train}: every class must occur in the training split, counts {counts.astype(int).tolist()}")
    prior = counts / counts.sum()
    probs = make_ensemble(c_base, len(spec.members), temperature)(members)
    alpha, metrics = fit_prior_tilt(probs, labels, prior)
    bias = -alpha * np.log(prior)
    keep = {k: v for k, v in c_base.items() if k not in ("metrics", "posterior_shift", "fitted_as", "class_bias")}
    tilted = {**keep, "class_bias": (bias - bias.mean()).tolist(), "temperature": temperature,
              "fitted_as": f"{c_base.get('method', 'soft_vote')}, tilted (alpha {alpha:.2f})",
              "tilt": {"alpha": alpha, "prior": prior.tolist(), "prior_from": str(train)}, "tta_flip": flip}
    out = make_ensemble(tilted, len(spec.members), temperature)(members)
    tilted["posterior_shift"] = fit_posterior_shift(out, labels).tolist()
    tilted["metrics"] = {**metrics, "note": "the tilt chosen out of fold; the base combiner as shipped"}
    name = "tilted" if not base or base == DEFAULT_COMBINER else f"{base}_tilted"
    _write_combiners(spec, {**spec.combiners, name: tilted})
    return name, tilted["metrics"]


def _is_flip_run(run: str | Path) -> bool:
    """Whether a member run folder holds flip-TTA outputs (its val.json says so: ``member-logits --tta-flip``)."""
    report = Path(run) / "val.json"
    return report.is_file() and bool(json.loads(report.read_text(encoding="utf-8")).get("tta_flip"))


def _member_outputs(spec, runs: list[str | Path]) -> tuple[list[np.ndarray], np.ndarray, bool]:
    """The validation probabilities of ``spec``'s members in ``runs`` (one folder per member, in order), their
    labels, and whether they are flip-TTA outputs (all alike, or refused)."""
    from rtfer.errors import BundleError
    from rtfer.training.stacker import load_runs

    outputs, labels = load_runs(runs)
    names = [o[3] for o in outputs]
    if names != [m.name for m in spec.members]:
        raise InputError(f"runs {names} are not bundle {spec.name}'s members {[m.name for m in spec.members]} "
                         "(one run folder per member, in order: member-logits writes them)")
    flips = {_is_flip_run(r) for r in runs}
    if len(flips) > 1:
        raise BundleError(f"runs {[str(r) for r in runs]} mix flip-TTA and plain outputs")
    return [o[0] for o in outputs], labels, flips.pop()


def _read_fit(ensemble_json: str | Path) -> tuple[Path, dict]:
    ens_path = Path(ensemble_json)
    if not ens_path.is_file():
        raise InputError(f"ensemble file {ens_path} does not exist (run `python -m rtfer.training fit-stacker` first)")
    return ens_path, json.loads(ens_path.read_text(encoding="utf-8"))


def _write_combiners(spec, combiners: dict) -> list[str]:
    from rtfer.bundle import write_bundle_json
    from rtfer.ensemble import make_ensemble

    for c in combiners.values():  # checked before bundle.json is touched
        make_ensemble(c, len(spec.members), float(c.get("temperature", 1.0)))
    meta = spec.raw  # bundle.json as read; write_bundle_json re-reads and validates what it writes
    meta["combiners"] = combiners
    write_bundle_json(spec.path, meta)
    return list(combiners)


def set_posterior_shifts(bundle: str | Path, runs: list[str | Path]) -> dict[str, list[float]]:
    """Give each alternative combiner of an existing bundle its ``posterior_shift``
    (:func:`rtfer.training.stacker.fit_posterior_shift`), fitted on the combiner's own output for the members'
    validation outputs in ``runs`` (one run folder per member, in the bundle's member order, named as the members:
    ``python -m rtfer.training member-logits`` writes them for a shipped bundle). Only the combiners that combine
    outputs like those are shifted: the flip ones with flip-TTA runs, the others with plain runs. ``fit-stacker``
    fits the shift itself (on out-of-fold outputs); this is for bundles fitted before it did. Returns
    {combiner: shift}."""
    from rtfer.bundle import BundleSpec, resolve_bundle_path, write_bundle_json
    from rtfer.ensemble import make_ensemble
    from rtfer.errors import BundleError
    from rtfer.training.stacker import fit_posterior_shift

    spec = BundleSpec.read(resolve_bundle_path(bundle))
    members, labels, flip = _member_outputs(spec, runs)
    # a combiner is shifted on outputs like the ones it combines: flip combiners on flip-TTA runs, the others on plain
    mine = {n: c for n, c in spec.combiners.items() if bool(c.get("tta_flip", False)) == flip}
    if not mine:
        raise BundleError(f"bundle {spec.name} has no {'flip' if flip else 'plain'} alternative combiner to shift "
                          "with these runs")
    meta = spec.raw
    shifts = {}
    for cname, c in mine.items():
        probs = make_ensemble(c, len(spec.members), float(c.get("temperature", 1.0)))(members)
        shifts[cname] = fit_posterior_shift(probs, labels).tolist()
        meta["combiners"][cname]["posterior_shift"] = shifts[cname]
    write_bundle_json(spec.path, meta)
    return shifts
