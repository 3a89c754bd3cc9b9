"""``python -m rtfer.training {pack,train,evaluate,gradcam,fit-stacker,export,import-reference,curves,quantize,
rewrite-graphs,set-combiners,import-backbone,probe,member-logits,fcmae-show}``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtfer.errors import RtferError

log = logging.getLogger("rtfer.training")

#: Top-level modules that the ``train`` extra provides (a missing one gets an install hint, not a traceback).
TRAIN_EXTRA_MODULES = {"torch", "torchvision", "timm", "sklearn", "onnxscript", "yaml"}

#: CLI flags of ``train`` that are shortcuts for config keys.
TRAIN_FLAGS = {"epochs": "run.epochs", "out": "run.out", "device": "run.device", "seed": "run.seed",
               "model": "model.name", "input_size": "model.input_size", "batch_size": "data.batch_size",
               "lr": "optim.lr", "train": "data.train", "val": "data.val", "test": "data.test",
               "threads": "run.threads"}


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="decode a dataset once into a compressed uint8 .npz")
    p.add_argument("kind", choices=["folder", "rafdb", "ferplus"])
    p.add_argument("root", help="image folder / RAF-DB root / fer2013 folder (for ferplus)")
    p.add_argument("-o", "--out", required=True, help="output .npz (RAF-DB with --val-fraction: a prefix)")
    p.add_argument("--split", default="train", help="train / test (RAF-DB), train / val (FER+), subfolder (folder)")
    p.add_argument("--votes", default="", help="FER+ votes CSV (kind ferplus)")
    p.add_argument("--min-votes", type=int, default=2,
                   help="FER+: votes a class needs to enter the soft target (default 2 drops single-vote outliers)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="carve a stratified validation split from this split (RAF-DB protocol: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE while packing")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one member network")
    p.add_argument("config", nargs="?", default=None, help="YAML config (training/configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    for flag, key in TRAIN_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=f"same as --set {key}=...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a split (JSON + Markdown + confusion PNG)")
    p.add_argument("checkpoint")
    p.add_argument("data", help="packed .npz or image-class folder")
    p.add_argument("--val", default="", help="validation split to fit the temperature on (default: DATA itself)")
    p.add_argument("-o", "--out", default=None, help="report folder (default: next to the checkpoint)")
    p.add_argument("--split", default=None, help="name used in the report files")
    p.add_argument("--tta-flip", action="store_true")
    p.add_argument("--device", default="auto")


def _add_gradcam(sub) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM heat-maps for a few images per class")
    p.add_argument("checkpoint")
    p.add_argument("data", help="packed .npz or image-class folder")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--layer", default="", help="module name to take activations from (default: last conv stage)")
    p.add_argument("--seed", type=int, default=0)


def _add_stacker(sub) -> None:
    p = sub.add_parser("fit-stacker", help="fit soft-vote weights and logistic stacking on validation outputs")
    p.add_argument("runs", nargs="+", help="member run folders (each with val_logits.npz and val.json)")
    p.add_argument("-o", "--out", required=True, help="output folder (ensemble.json, ablation.md/json)")
    p.add_argument("--choose", choices=["auto", "soft_vote", "logistic", "logistic_balanced"], default="auto",
                   help="auto: soft vote or logistic stacking, whichever has the best cross-validated --metric; "
                        "logistic_balanced (class-balanced) trades overall for mean-class accuracy")
    p.add_argument("--metric", choices=["accuracy", "mean_class_accuracy"], default="accuracy")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export member checkpoints + ensemble into a bundle folder")
    p.add_argument("checkpoints", nargs="+", help="best.pt of each member, in bundle order")
    p.add_argument("-o", "--out", required=True, help="bundle folder")
    p.add_argument("--ensemble", required=True, help="ensemble.json written by fit-stacker")
    p.add_argument("--name", default="default")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--interim", action="store_true", help="mark the bundle as trained with a reduced recipe")
    p.add_argument("--template", default="",
                   help="alignment template JSON ([[x, y] * 5] in crop units, or rtfer.training.fit_template output, "
                        "whose detector is recorded too)")
    p.add_argument("--detector", default="", help="the detector whose landmarks the template fits (bundle.json "
                                                   "alignment.detector; --detector auto at run time uses it)")
    p.add_argument("--parity-images", default="", help="packed .npz / image folder for the ORT-vs-torch check")
    p.add_argument("--names", default="", help="comma-separated member names (default: the run folder names)")
    p.add_argument("--parity-tol", type=float, default=None,
                   help="per-member ONNX-vs-torch tolerance relative to the logit scale (export's default: 0.02)")
    p.add_argument("--data-note", default="", help="what the members were trained on (recorded in bundle.json)")
    p.add_argument("--tta-flip", action="store_true",
                   help="members average each crop with its mirror image at run time (fit the stacker on flip-TTA "
                        "validation logits: evaluate --tta-flip --out RUN_tta)")
    p.add_argument("--align-size", type=int, default=0, metavar="PX",
                   help="members with a larger input align faces at PX and upsample them at run time, as they were "
                        "trained (48 for members trained on FER2013's 48 px faces; default: align at the input size)")


def _add_import(sub) -> None:
    p = sub.add_parser("import-reference", help="bundle from a DDAMFN reference checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--name", default="ddamfn-reference")
    p.add_argument("--parity-images", default="", help="packed .npz / image folder for the ORT-vs-torch check")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that needs full unpickling (runs code from the file: only files you trust)")


def _add_import_backbone(sub) -> None:
    p = sub.add_parser("import-backbone", help="convert face-pretrained weights into an rtfer backbone file")
    p.add_argument("kind", choices=["dlib"], help="dlib: dlib's face-recognition ResNet-29 (CC0) -> faceres29")
    p.add_argument("source", nargs="?", default="",
                   help="the weights file (default: the one inside an installed face_recognition_models package)")
    p.add_argument("-o", "--out", required=True, help="output .pt (a plain tensor dict; model.kwargs.pretrained_path)")


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="linear probes on frozen backbone features (screen sizes and layers)")
    p.add_argument("backbone", help="a file from import-backbone, or a TF.js graph model's model.json (with --nodes)")
    p.add_argument("--nodes", nargs="+", default=[],
                   help="TF.js graph model: the nodes whose (spatially pooled) values are probed, each and together")
    p.add_argument("--input-scales", nargs="+", default=["1/255,0"], metavar="A,B",
                   help="TF.js graph model: input pixel mappings pixel*A+B to try (a graph model does not record its "
                        "preprocessing), e.g. 1/255,0 1,0 1/127.5,-1")
    p.add_argument("--train", required=True, help="packed training split (.npz)")
    p.add_argument("--val", required=True, help="packed validation split (.npz)")
    p.add_argument("-o", "--out", required=True, help="output folder (probe.md, probe.json)")
    p.add_argument("--sizes", type=int, nargs="+", default=[150, 112, 96])
    p.add_argument("--crops", type=float, nargs="+", default=[1.0],
                   help="central crop fractions of each training image before resizing (1 = whole image)")
    p.add_argument("--train-limit", type=int, default=8000, help="stratified subset of the training split")
    p.add_argument("--threads", type=int, default=0)


def _add_member_logits(sub) -> None:
    p = sub.add_parser("member-logits", help="a bundle's members' validation outputs as run folders for fit-stacker")
    p.add_argument("bundle", help="bundle name or folder")
    p.add_argument("data", help="packed validation split (.npz)")
    p.add_argument("-o", "--out", required=True, help="folder for one run folder per member")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--tta-flip", action="store_true",
                   help="each image and its mirror image, logits averaged (for a flip combiner: set-combiners --flip)")


def _add_fcmae_show(sub) -> None:
    p = sub.add_parser("fcmae-show", help="picture of an FCMAE pretraining run's reconstructions of hidden face cells")
    p.add_argument("checkpoint", help="the pretraining run's last.pt (trained with loss.mask_ratio)")
    p.add_argument("faces", nargs="+", help="photos (the largest face of each is detected and aligned as rtfer "
                                            "analyze does) or one packed .npz of face crops")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--count", type=int, default=8, help="crops taken from a packed .npz (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")


def _add_curves(sub) -> None:
    p = sub.add_parser("curves", help="plot the validation curves of several runs on one chart (PNG)")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--title", default="")


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="add INT8 members to a bundle (onnxruntime static quantisation) and record "
                                        "FP vs INT8 val accuracy and cost in bundle.json")
    p.add_argument("bundle", help="bundle folder (changed in place: INT8 files are added, FP files are kept)")
    p.add_argument("--calib", required=True, help="calibration images: packed .npz or image-class folder")
    p.add_argument("--val", default="", help="validation split for the accuracy gate (default: --calib)")
    p.add_argument("--calib-count", type=int, default=512, help="random calibration images (default 512; 0 = all)")
    p.add_argument("--format", choices=["auto", "qdq", "qoperator"], default="auto",
                   help="ONNX Runtime quantisation format (auto: build both, keep the faster accepted one)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default per channel)")
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="accept INT8 as the CPU default only if ensemble val accuracy drops by at most this many "
                        "points (default 0.5)")
    p.add_argument("--cost-threads", type=int, default=1, help="intra-op threads for the per-face cost (default 1)")
    p.add_argument("--seed", type=int, default=0)


def _add_rewrite(sub) -> None:
    p = sub.add_parser("rewrite-graphs", help="apply export's graph rewrites (PRelu -> Max(x, a*x)) to an existing "
                                              "bundle's members, checking that the logits stay the same")
    p.add_argument("bundle", help="bundle folder (changed in place; INT8 files made before become stale)")


def _add_set_combiners(sub) -> None:
    p = sub.add_parser("set-combiners", help="give an existing bundle the alternative combiners (e.g. balanced) of "
                                             "the fit-stacker run it was exported from")
    p.add_argument("bundle", help="bundle folder (bundle.json changed in place)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ensemble", help="ensemble.json written by fit-stacker for the bundle's members")
    g.add_argument("--shift-from", nargs="+", metavar="RUN",
                   help="only fit each alternative combiner's posterior_shift (valence goes through it) on these "
                        "member run folders' validation outputs, one per member in order (member-logits writes them)")
    g.add_argument("--flip", metavar="ENSEMBLE_JSON",
                   help="add flip combiners (flip, flip_balanced, ...: each face and its mirror image, twice the "
                        "classifier cost) from fit-stacker's fit on member-logits BUNDLE --tta-flip outputs")
    g.add_argument("--tilt", metavar="BASE",
                   help="add combiner BASE (default, flip, ...) tilted towards the rare classes as far as it keeps its "
                        "accuracy on val (named tilted or BASE_tilted); needs --runs and --train")
    p.add_argument("--runs", nargs="+", metavar="RUN",
                   help="--tilt: the members' validation outputs, one folder per member in order (member-logits; "
                        "with --tta-flip for a flip BASE)")
    p.add_argument("--train", help="--tilt: the packed training split, whose class frequencies the tilt divides out")


def cmd_set_combiners(a) -> int:
    from rtfer.training.bundling import set_combiners, set_flip_combiners, set_posterior_shifts, set_tilted_combiner

    if a.flip:
        names = set_flip_combiners(a.bundle, a.flip)
        print(f"{a.bundle}: combiners default" + "".join(f", {n}" for n in names))
        return 0
    if a.tilt:
        if not a.runs or not a.train:
            print("error: set-combiners --tilt needs --runs (member-logits folders) and --train (packed split)",
                  file=sys.stderr)
            return 2
        name, m = set_tilted_combiner(a.bundle, a.tilt, a.runs, a.train)
        print(f"{a.bundle}: combiner {name} (alpha {m['fold_alphas']} per fold): accuracy {100 * m['accuracy']:.2f}%, "
              f"mean-class {100 * m['mean_class_accuracy']:.2f}% (cross-validated; untilted "
              f"{100 * m['untilted']['accuracy']:.2f}% / {100 * m['untilted']['mean_class_accuracy']:.2f}%)")
        return 0
    if a.shift_from:
        for name, shift in set_posterior_shifts(a.bundle, a.shift_from).items():
            print(f"{a.bundle}: combiner {name} posterior_shift " + " ".join(f"{v:+.3f}" for v in shift))
        return 0
    names = set_combiners(a.bundle, a.ensemble)
    print(f"{a.bundle}: combiners default" + "".join(f", {n}" for n in names))
    return 0


def cmd_rewrite_graphs(a) -> int:
    from rtfer.training.export import rewrite_bundle_graphs

    counts = rewrite_bundle_graphs(a.bundle)
    print(", ".join(f"{k}: {v} PRelu rewritten" for k, v in counts.items()))
    return 0


def cmd_quantize(a) -> int:
    from rtfer.training.quantize import quantize_bundle, summary_table

    if a.calib_count < 0 or a.cost_threads < 1 or a.max_drop < 0:
        raise RtferError("--calib-count must be >= 0, --cost-threads >= 1 and --max-drop >= 0")
    record = quantize_bundle(a.bundle, a.calib, val=a.val or None, fmt=a.format, method=a.method,
                             calib_count=a.calib_count, per_channel=not a.per_tensor, seed=a.seed,
                             max_drop=a.max_drop, cost_threads=a.cost_threads)
    print(summary_table(record))
    return 0


def cmd_fcmae_show(a) -> int:
    from rtfer.training.fcmae import show

    if len(a.faces) == 1 and a.faces[0].endswith(".npz"):
        from rtfer.training.bundling import parity_crops

        faces = parity_crops(a.faces[0], count=a.count)
    else:
        faces = _aligned_faces(a.faces)
    log.info("wrote %s", show(a.checkpoint, faces, a.out, seed=a.seed))
    return 0


def _aligned_faces(paths: list[str]):
    """The largest face of each photo, aligned as ``rtfer analyze`` and ``rtfer adapt`` align it with the default
    bundle (uint8 RGB, at the bundle's largest member input size)."""
    import cv2
    import numpy as np

    from rtfer.adapt.examples import FaceReader
    from rtfer.bundle import BundleSpec, resolve_bundle_path

    reader = FaceReader(BundleSpec.read(resolve_bundle_path("default")), "auto", "no", 0)
    out = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            raise RtferError(f"cannot read {path} as an image")
        faces = reader.largest_face(image)
        if faces is None:
            raise RtferError(f"no face found in {path}")
        out.append(faces[max(faces)])
    return np.stack(out)


def cmd_curves(a) -> int:
    from rtfer.training.runlog import plot_runs

    log.info("wrote %s", plot_runs(a.runs, a.out, a.title))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rtfer.training",
                                     description="Train, evaluate, stack, export and quantise rtfer's model bundles.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pack, _add_train, _add_evaluate, _add_gradcam, _add_stacker, _add_export, _add_import,
                _add_curves, _add_quantize, _add_rewrite, _add_set_combiners, _add_import_backbone, _add_probe, _add_member_logits,
                _add_fcmae_show):
        add(sub)
    return parser


def cmd_pack(a) -> int:
    from rtfer.training.data import DataSpec, pack, read_spec, stratified_split

    spec = DataSpec(kind=a.kind, root=a.root, split=a.split, votes=a.votes, min_votes=a.min_votes)
    if a.kind == "ferplus" and not a.votes:
        raise RtferError("pack ferplus needs --votes fer2013_ferplus_votes.csv")
    if a.kind == "folder":
        spec.split = a.split if (Path(a.root) / a.split).is_dir() else ""
    index = read_spec(spec)
    if a.val_fraction:
        tr, va = stratified_split(index.labels, a.val_fraction, a.seed)
        prefix = str(a.out).removesuffix(".npz")
        for part, idx in (("train", tr), ("val", va)):
            pack(index.subset(idx), f"{prefix}_{part}.npz", a.size)
    else:
        pack(index, a.out, a.size)
    return 0


def cmd_train(a) -> int:
    from rtfer.training.config import load_config
    from rtfer.training.train import fit

    overrides = list(a.overrides)
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(a, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if a.resume:
        overrides.append("run.resume=true")
    if a.no_progress:
        overrides.append("run.progress=false")
    cfg = load_config(a.config, overrides)
    result = fit(cfg)
    log.info("run folder %s: best epoch %d, val %s", result.out, result.best_epoch, json.dumps(result.val))
    return 0


def cmd_evaluate(a) -> int:
    import numpy as np

    from rtfer.training.data import load_split
    from rtfer.training.engine import predict_logits
    from rtfer.training.evaluate import evaluate_logits, fit_temperature, write_report
    from rtfer.training.train import load_checkpoint, preprocessing, resolve_device

    model, _ = load_checkpoint(a.checkpoint)
    model.to(resolve_device(a.device))
    size, mean, std, gray = preprocessing(model)
    data = load_split(a.data)
    logits = predict_logits(model, data, size, mean, std, gray=gray, tta_flip=a.tta_flip, progress=True)
    temperature = None
    if a.val:
        val = load_split(a.val)
        temperature = fit_temperature(predict_logits(model, val, size, mean, std, gray=gray, tta_flip=a.tta_flip),
                                      val.labels)
    split = a.split or Path(a.data).stem
    report = evaluate_logits(logits, data.labels, split=split, temperature=temperature)
    folder = Path(a.out or Path(a.checkpoint).parent)
    paths = write_report(report, folder, split, title=Path(a.checkpoint).parent.name)
    np.savez(folder / f"{split}_logits.npz", logits=logits, labels=data.labels)  # fit-stacker reads val_logits.npz
    log.info("%s: accuracy %.4f, mean-class %.4f -> %s", split, report.classification.accuracy,
             report.classification.mean_class_accuracy, paths["md"])
    return 0


def cmd_gradcam(a) -> int:
    from rtfer.training.data import load_split
    from rtfer.training.gradcam import gradcam_grid
    from rtfer.training.train import load_checkpoint

    model, _ = load_checkpoint(a.checkpoint)
    out = gradcam_grid(model, load_split(a.data), a.out, per_class=a.per_class, layer=a.layer or None, seed=a.seed)
    log.info("Grad-CAM grid written to %s", out)
    return 0


def cmd_fit_stacker(a) -> int:
    from rtfer.training.stacker import fit_ensemble_from_runs

    result = fit_ensemble_from_runs(a.runs, a.out, choose=a.choose, metric=a.metric, folds=a.folds, seed=a.seed)
    log.info("chose %s; ablation in %s", result.chosen, Path(a.out) / "ablation.md")
    return 0


def cmd_export(a) -> int:
    from rtfer.training.bundling import export_bundle

    names = [n.strip() for n in a.names.split(",")] if a.names else None
    template, alignment = None, {}
    if a.template:  # a [[x, y] * 5] list, or fit_template's JSON with a "template" entry
        template = json.loads(Path(a.template).read_text(encoding="utf-8"))
        if isinstance(template, dict):
            alignment = {"detector": template.get("detector"), "landmarks": template.get("order"),
                         "source": str(a.template)}
            template = template["template"]
    if a.detector:
        alignment["detector"] = a.detector
    alignment = {k: v for k, v in alignment.items() if v}
    folder = export_bundle(a.checkpoints, a.out, ensemble_json=a.ensemble, name=a.name, version=a.version,
                           interim=a.interim, alignment_template=template, alignment=alignment,
                           parity_images=a.parity_images or None,
                           member_names=names, training_extra={"data": a.data_note} if a.data_note else None,
                           parity_tol=a.parity_tol, tta_flip=a.tta_flip, align_size=a.align_size)
    log.info("bundle written to %s", folder)
    return 0


def cmd_import_reference(a) -> int:
    from rtfer.training.reference import bundle_from_reference

    from rtfer.training.bundling import parity_crops

    folder = bundle_from_reference(a.checkpoint, a.out, name=a.name, parity_images=parity_crops(a.parity_images),
                                   trust_pickle=a.trust_pickle)
    log.info("bundle written to %s", folder)
    return 0


def cmd_import_backbone(a) -> int:
    from rtfer.training.import_backbone import import_dlib

    import_dlib(a.source or None, a.out)
    return 0


def _input_scale(text: str) -> tuple[float, float]:
    """``A,B`` (each a number or a quotient such as 1/255 or 1/127.5) -> (A, B)."""
    def number(v: str) -> float:
        num, slash, den = v.partition("/")
        return float(num) / float(den) if slash else float(num)

    try:
        a, b = (number(v) for v in text.split(","))
    except (ValueError, ZeroDivisionError):  # not two numbers
        raise RtferError(f"--input-scales takes A,B pairs such as 1/255,0; got {text!r}") from None
    return a, b


def cmd_probe(a) -> int:
    from rtfer.training.probe import run_probe, run_tfjs_probe

    if a.backbone.endswith(".json"):
        if not a.nodes:
            raise RtferError("a TF.js graph model needs --nodes (the node names to probe)")
        scales = [_input_scale(text) for text in a.input_scales]
        rows = run_tfjs_probe(a.backbone, a.train, a.val, a.out, a.nodes, sizes=a.sizes, scales=scales,
                              train_limit=a.train_limit, threads=a.threads)
    else:
        rows = run_probe(a.backbone, a.train, a.val, a.out, sizes=a.sizes, crops=a.crops, train_limit=a.train_limit,
                         threads=a.threads)
    best = max(rows, key=lambda r: r.accuracy)
    log.info("best probe: size %d, crop %.2f, %s: %.2f%% val (table in %s/probe.md)", best.size, best.crop,
             best.features, 100 * best.accuracy, a.out)
    return 0


def cmd_member_logits(a) -> int:
    from rtfer.training.member_logits import write_member_logits

    write_member_logits(a.bundle, a.data, a.out, precision=a.precision, tta_flip=a.tta_flip)
    return 0


COMMANDS = {"pack": cmd_pack, "train": cmd_train, "evaluate": cmd_evaluate, "gradcam": cmd_gradcam,
            "fit-stacker": cmd_fit_stacker, "export": cmd_export, "import-reference": cmd_import_reference,
            "curves": cmd_curves, "quantize": cmd_quantize, "rewrite-graphs": cmd_rewrite_graphs,
            "set-combiners": cmd_set_combiners, "import-backbone": cmd_import_backbone, "probe": cmd_probe,
            "member-logits": cmd_member_logits, "fcmae-show": cmd_fcmae_show}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # the entry point, not a library: configure logging for the user
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[a.command](a)
    except (RtferError, FileNotFoundError) as exc:
        print(f"python -m rtfer.training: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(f"python -m rtfer.training: error: {a.command} needs {exc.name}, which is not installed: "
              "pip install 'rtfer[train]' (see README, Install size, for the CPU-only torch wheel)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
