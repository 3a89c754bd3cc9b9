"""``python -m rtfer.engines build BUNDLE_DIR`` builds engines for every member of a bundle; ``list`` shows the cache.

bundle.json is read with json only (engines/ must not import rtfer).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtfer.engines.builder import PRECISIONS, EngineBuildError, build_engine
from rtfer.engines.cache import EngineCache
from rtfer.engines.precision import DEFAULT_FP32_POLICY


def bundle_members(bundle_dir: Path) -> list[tuple[Path, int]]:
    """(ONNX path, input size) of each member listed in ``bundle_dir/bundle.json``."""
    meta = bundle_dir / "bundle.json"
    try:
        d = json.loads(meta.read_text(encoding="utf-8"))
        members = [(bundle_dir / m["file"], int(m["input_size"])) for m in d["members"]]
    except FileNotFoundError:
        raise EngineBuildError(f"{bundle_dir} is not a model bundle (no bundle.json inside)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineBuildError(f"{meta} is not a valid bundle description ({exc!r})") from None
    if not members:
        raise EngineBuildError(f"{meta} lists no members")
    return members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtfer.engines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or find cached) engines for every member of a bundle")
    b.add_argument("bundle", type=Path, help="bundle folder (with bundle.json)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp16")
    b.add_argument("--min-batch", type=int, default=1)
    b.add_argument("--opt-batch", type=int, default=8)
    b.add_argument("--max-batch", type=int, default=64)
    b.add_argument("--workspace-gb", type=float, default=2.0)
    b.add_argument("--device", type=int, default=0, help="CUDA device index")
    b.add_argument("--cache", type=Path, default=None, help="cache folder (default: $RTFER_ENGINE_CACHE or "
                                                            "~/.cache/rtfer/engines)")
    b.add_argument("--no-fp32-layers", action="store_true", help="do not pin LayerNorm/GRN layers to FP32")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    ls = sub.add_parser("list", help="list cached engines")
    ls.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cache = EngineCache(args.cache)
    try:
        if args.command == "list":
            entries = list(cache.entries())
            if not entries:
                print(f"no cached engines in {cache.root} (build them with `python -m rtfer.engines build BUNDLE`)")
            for e in entries:
                print(f"{e['path']}  {Path(e.get('source', '?')).name}  {e['precision']}  "
                      f"batch {e['min_batch']}/{e['opt_batch']}/{e['max_batch']}  {e['input_size']}px  "
                      f"{e['gpu_name']}  TensorRT {e['trt_version']}")
            return 0
        if args.device:
            import torch  # TensorRT builds on the current CUDA device

            torch.cuda.set_device(args.device)
        for onnx_path, size in bundle_members(args.bundle):
            path = build_engine(onnx_path, input_size=size, precision=args.precision, min_batch=args.min_batch,
                                opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_gb=args.workspace_gb,
                                fp32_layers=None if args.no_fp32_layers else DEFAULT_FP32_POLICY, cache=cache,
                                device=args.device, force=args.force)
            print(f"{onnx_path.name}: {path}")
    except EngineBuildError as exc:
        print(f"python -m rtfer.engines: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
