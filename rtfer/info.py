"""`rtfer info`: what a bundle holds and what this machine can run it on, as readable tables or as JSON.

:func:`collect_info` gathers everything into one plain dict (members, ensemble, validation figures, ablation,
detector, INT8 members, SDKs, providers, devices and the ``auto`` choice); :func:`render_info` prints it as
fixed-width tables; ``rtfer info --json`` prints the dict itself, complete (nothing is cut).
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

SDKS = ("onnxruntime", "torch", "tensorrt")


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        from importlib.metadata import version

        dist = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "torch": "torch"}[module]
        for name in (dist, f"{dist}-gpu", f"{dist}-cu12"):
            try:
                return version(name)
            except Exception:  # noqa: BLE001 - not this distribution name
                continue
    except ImportError:  # pragma: no cover
        pass
    return "installed"


def _devices() -> list[dict[str, Any]]:
    """The CPU and the CUDA devices torch sees (torch is imported only when an NVIDIA driver is present)."""
    import os
    import platform

    devices: list[dict[str, Any]] = [{"device": "cpu", "name": platform.processor() or platform.machine(),
                                      "memory_gb": None, "cores": os.cpu_count()}]
    from rtfer.backends import _nvidia_driver_present

    if importlib.util.find_spec("torch") and _nvidia_driver_present():
        try:
            import torch

            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                devices.append({"device": f"cuda:{i}", "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                "cores": getattr(p, "multi_processor_count", None)})
        except Exception as exc:  # noqa: BLE001 - a broken CUDA install is reported, not fatal
            devices.append({"device": "cuda", "name": f"unavailable ({exc})", "memory_gb": None, "cores": None})
    return devices


def collect_info(bundle: str = "default", backend: str = "auto", device: str = "auto",
                 precision: str = "auto") -> dict[str, Any]:
    """Everything `rtfer info` shows, as JSON-ready data."""
    from rtfer import __version__, backends
    from rtfer.bundle import BundleSpec, resolve_bundle_path

    spec = BundleSpec.read(resolve_bundle_path(bundle))
    raw = spec.raw
    metrics = raw.get("metrics") or {}
    member_metrics = metrics.get("members") or {}
    members = []
    for m in spec.members:
        r = member_metrics.get(m.name) or {}
        members.append({"name": m.name, "architecture": m.architecture, "input_size": m.input_size,
                        "color": m.color, "file": m.file, "sha256": m.sha256,
                        "accuracy": r.get("accuracy"), "mean_class_accuracy": r.get("mean_class_accuracy"),
                        "recall": r.get("recall"), "pretrained_from": m.pretrained_from,
                        "weights_license": m.weights_license, "training_data": m.training_data})
    ens_metrics = metrics.get("ensemble") or {}
    ensemble = {"method": spec.ensemble.get("method"), "temperature": spec.temperature,
                **{k: v for k, v in spec.ensemble.items() if k != "method"},
                **{k: v for k, v in ens_metrics.items() if k != "method"}}
    combiners = [{"name": "default", "method": spec.ensemble.get("method"), "accuracy": ens_metrics.get("accuracy"),
                  "mean_class_accuracy": ens_metrics.get("mean_class_accuracy"), "recall": ens_metrics.get("recall"),
                  "tta_flip": False}]
    for cname, c in spec.combiners.items():
        cm = c.get("metrics") or {}
        combiners.append({"name": cname, "method": c.get("method"), "fitted_as": c.get("fitted_as"),
                          "accuracy": cm.get("accuracy"), "mean_class_accuracy": cm.get("mean_class_accuracy"),
                          "recall": cm.get("recall"), "tta_flip": bool(c.get("tta_flip", False))})
    int8: dict[str, Any] = {}
    if hasattr(spec, "int8") and spec.int8:
        usable, accepted, why = spec.int8_status()
        int8 = {"usable": usable, "accepted": accepted, "why_not": why or None, **spec.int8}
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    chosen_backend, chosen_device = backends.resolve(backend, device)
    choice = {"backend": chosen_backend, "device": chosen_device}
    try:
        from rtfer.bundle import resolve_precision

        choice["precision"] = resolve_precision(precision, spec, chosen_backend, chosen_device)
    except ImportError:
        pass
    return {
        "rtfer": __version__,
        "bundle": {"name": spec.name, "version": spec.version, "path": str(spec.path), "interim": spec.interim,
                   "classes": list(spec.classes), "training": raw.get("training"),
                   "adapted_from": raw.get("base") or raw.get("adapted_from")},
        "members": members,
        "ensemble": ensemble,
        "combiners": combiners,
        "validation": {"split": metrics.get("split"), "count": metrics.get("count"),
                       "confusion_png": metrics.get("confusion_png")} if metrics else {},
        "ablation": list(metrics.get("ablation") or []),
        "cost_ms_per_face": metrics.get("cost_ms_per_face") or {},
        "detector": {"name": spec.detector,
                     "note": "the alignment template was fitted to its landmarks; --detector auto uses it"
                     if spec.detector else "any (generic alignment template; --detector auto picks one)"},
        "int8": int8,
        "sdks": {name: _version(name) for name in SDKS},
        "onnxruntime_providers": providers,
        "devices": _devices(),
        "auto_choice": choice,
    }


# -- rendering -------------------------------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def table(headers: list[str], rows: list[list[Any]], *, indent: str = "  ") -> str:
    """A fixed-width table: left-aligned text, right-aligned numbers and percentages."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def numeric(col: int) -> bool:
        vals = [r[col] for r in cells if r[col] != "-"]
        return bool(vals) and all(v.replace(".", "", 1).replace("%", "").replace("-", "").replace("+", "")
                                  .replace(" ms", "").isdigit() for v in vals)

    align = [numeric(i) for i in range(len(headers))]
    fmt = lambda row: indent + "  ".join(c.rjust(w) if a else c.ljust(w)  # noqa: E731
                                        for c, w, a in zip(row, widths, align)).rstrip()
    return "\n".join([fmt(headers), indent + "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells])


def _kv(pairs: list[tuple[str, Any]], indent: str = "  ") -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k.ljust(width)}  {'-' if v is None else v}" for k, v in pairs)


def render_info(info: dict[str, Any]) -> str:
    """The readable form of :func:`collect_info`'s dict."""
    from rtfer.labels import CLASSES

    b, e, out = info["bundle"], info["ensemble"], []
    out.append(f"bundle {b['name']} {b['version']}" + ("  [interim]" if b["interim"] else ""))
    pairs = [("path", b["path"]), ("classes", ", ".join(b["classes"]))]
    training = b.get("training") or {}
    if isinstance(training, dict) and training.get("data"):
        pairs.append(("trained on", training["data"]))
    if b.get("adapted_from"):
        base = b["adapted_from"]
        pairs.append(("adapted from", f"{base.get('name')} {base.get('version')}" if isinstance(base, dict) else base))
    out.append(_kv(pairs))

    out.append("\nmembers")
    out.append(table(["member", "architecture", "input", "colour", "file", "val acc", "mean-class"],
                     [[m["name"], m["architecture"], f"{m['input_size']}px", m["color"], m["file"],
                       _pct(m["accuracy"]), _pct(m["mean_class_accuracy"])] for m in info["members"]]))
    out.append("\nprovenance")
    for m in info["members"]:
        out.append(f"  {m['name']}: pretrained from {m.get('pretrained_from') or 'none'}")
        out.append(f"    weights licence: {m.get('weights_license') or 'not recorded'}")
        out.append(f"    training data: {m.get('training_data') or 'not recorded'}")

    out.append("\nensemble")
    pairs = [("method", e.get("method")), ("temperature", f"{e.get('temperature', 1.0):.3f}")]
    if e.get("weights") is not None:
        pairs.append(("weights", ", ".join(f"{w:.3g}" for w in e["weights"])))
    if e.get("accuracy") is not None:
        cv = f" ({e['folds']}-fold cross-validated)" if e.get("cross_validated") else ""
        pairs.append(("val accuracy", f"{_pct(e['accuracy'])}, mean-class {_pct(e.get('mean_class_accuracy'))}{cv}"))
    if e.get("ece") is not None:
        tempered = f" -> {e['ece_tempered']:.3f} tempered" if e.get("ece_tempered") is not None else ""
        pairs.append(("calibration (ECE)", f"{e['ece']:.3f}{tempered}"))
    out.append(_kv(pairs))

    v = info["validation"]
    if v:
        out.append(f"\nvalidation ({v.get('split') or 'validation'}, {v.get('count', '?')} images): recall per class")
        rows = []
        for c in CLASSES:
            row = [c, _pct((e.get("recall") or {}).get(c))]
            row += [_pct((m.get("recall") or {}).get(c)) for m in info["members"]]
            rows.append(row)
        out.append(table(["class", "ensemble", *[m["name"] for m in info["members"]]], rows))
        if v.get("confusion_png"):
            out.append(f"  confusion matrix: {b['path']}/{v['confusion_png']}")

    if info["ablation"]:
        out.append("\nablation (validation)")
        out.append(table(["method", "accuracy", "mean-class", "fitted"],
                         [[r.get("method"), _pct(r.get("accuracy")), _pct(r.get("mean_class_accuracy")),
                           "yes" if r.get("fitted") else "no"] for r in info["ablation"]]))
    if len(info.get("combiners") or []) > 1:
        out.append("\ncombiners (rtfer analyze --combiner NAME; validation, cross-validated)")
        out.append(table(["combiner", "method", "accuracy", "mean-class", "fear recall", "disgust recall", "cost"],
                         [[c["name"], c.get("fitted_as") or c.get("method"), _pct(c.get("accuracy")),
                           _pct(c.get("mean_class_accuracy")), _pct((c.get("recall") or {}).get("fear")),
                           _pct((c.get("recall") or {}).get("disgust")),
                           "2x (face + mirror)" if c.get("tta_flip") else "1x"] for c in info["combiners"]]))
    if info["cost_ms_per_face"]:
        out.append("\ncost per face (onnxruntime, 1 thread)")
        out.append(table(["part", "ms"], [[k, f"{v:.2f}"] for k, v in info["cost_ms_per_face"].items()]))

    out.append("\ndetector")
    out.append(_kv([("name", info["detector"]["name"] or "any"), ("note", info["detector"]["note"])]))

    q = info["int8"]
    if q:
        state = "accepted" if q.get("usable") and q.get("accepted") else (
            "not accepted" if q.get("usable") else f"unusable: {q.get('why_not')}")
        val = q.get("val") or {}
        fp, i8 = (val.get("fp") or {}).get("ensemble") or {}, (val.get("int8") or {}).get("ensemble") or {}
        out.append("\nint8 members")
        runs = [("runs", ", ".join(f"{k} {v}" for k, v in q["members"].items()))] if q.get("members") else []
        out.append(_kv([("status", state), ("format", q.get("format")), *runs,
                        ("val accuracy", f"{_pct(fp.get('accuracy'))} fp -> {_pct(i8.get('accuracy'))} int8 "
                                         f"({val.get('count', '?')} images)")]))
        cost = q.get("cost_ms_per_face") or {}
        if cost.get("fp") and cost.get("int8"):
            out.append(table(["part", "fp ms", "int8 ms"], [[k, f"{cost['fp'][k]:.2f}", f"{cost['int8'][k]:.2f}"]
                                                            for k in cost["int8"] if k in cost["fp"]]))

    out.append("\nbackends")
    out.append(table(["sdk", "version"], [[k, v or "not installed"] for k, v in info["sdks"].items()]))
    if info["onnxruntime_providers"]:
        out.append(f"  onnxruntime providers: {', '.join(info['onnxruntime_providers'])}")
    out.append("\ndevices")
    out.append(table(["device", "name", "memory", "cores"],
                     [[d["device"], d["name"], f"{d['memory_gb']} GB" if d["memory_gb"] else None, d["cores"]]
                      for d in info["devices"]]))
    c = info["auto_choice"]
    out.append("\nauto choice: backend {} on {}{}".format(c["backend"], c["device"],
                                                         f", precision {c['precision']}" if "precision" in c else ""))
    return "\n".join(out)
