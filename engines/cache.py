"""On-disk cache of TensorRT engines and timing caches.

An engine is only valid for the GPU model, TensorRT version, ONNX file, precision and shape profile it was built
for, so the cache key hashes all of them. Entries are written atomically (temp file + ``os.replace``) with a JSON
sidecar holding the engine's sha256, so a truncated or corrupted engine is detected and rebuilt instead of crashing
the runtime. One timing cache per GPU + TensorRT version is shared by all builds to make rebuilds fast.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "RTFER_ENGINE_CACHE"
KEY_VERSION = 1  # bump when the key's contents or the build recipe change


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtfer" / "engines"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for TensorRT: engines are not portable across models or compute capabilities."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def slug(self) -> str:
        return f"{_slug(self.name)}-sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine's bytes depend on; its hash is the cache key."""

    onnx_sha256: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    input_size: int
    gpu_name: str
    compute_capability: tuple[int, int]
    trt_version: str
    fp32_policy: str = ""  # fingerprint of the FP32 layer policy (changes the engine in fp16 builds)

    def key(self) -> str:
        payload = dict(asdict(self), key_version=KEY_VERSION)
        payload["compute_capability"] = list(self.compute_capability)
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


class EngineCache:
    """A folder of ``<key>.engine`` files, each with a ``<key>.json`` sidecar, and ``timing-*.cache`` files."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r})"

    def engine_path(self, spec: EngineSpec) -> Path:
        return self.root / f"{spec.key()}.engine"

    def meta_path(self, spec: EngineSpec) -> Path:
        return self.root / f"{spec.key()}.json"

    def lookup(self, spec: EngineSpec) -> Path | None:
        """The cached engine for ``spec``, or None on a miss. A damaged entry is deleted and reported as a miss."""
        path, meta_path = self.engine_path(spec), self.meta_path(spec)
        if not path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            expected = meta["engine_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("engine cache: %s has no valid metadata; rebuilding", path.name)
            self.invalidate(spec)
            return None
        if sha256_file(path) != expected:
            log.warning("engine cache: %s is corrupted (sha256 mismatch); rebuilding", path.name)
            self.invalidate(spec)
            return None
        return path

    def store(self, spec: EngineSpec, engine: bytes, *, source: str = "", build_s: float = 0.0) -> Path:
        """Atomically write an engine and its sidecar (sidecar last, so a crash never leaves a 'valid' half entry)."""
        path = self.engine_path(spec)
        atomic_write_bytes(path, engine)
        meta = dict(asdict(spec), key=spec.key(), engine_sha256=hashlib.sha256(engine).hexdigest(),
                    engine_bytes=len(engine), source=source, build_s=round(build_s, 2),
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        atomic_write_bytes(self.meta_path(spec), (json.dumps(meta, indent=2) + "\n").encode())
        return path

    def invalidate(self, spec: EngineSpec) -> None:
        """Remove an entry (e.g. one that TensorRT refused to deserialize)."""
        self.engine_path(spec).unlink(missing_ok=True)
        self.meta_path(spec).unlink(missing_ok=True)

    def entries(self) -> list[dict]:
        """Metadata of every engine in the cache (for ``python -m rtfer.engines list``)."""
        out = []
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and "key" in meta:
                meta["path"] = str(meta_path.with_suffix(".engine"))
                out.append(meta)
        return out

    # Timing caches: one per GPU model + TensorRT version, shared by every build on that pair.
    def timing_cache_path(self, gpu: GpuInfo, trt_version: str) -> Path:
        return self.root / f"timing-{gpu.slug}-trt{_slug(trt_version)}.cache"

    def load_timing_cache(self, gpu: GpuInfo, trt_version: str) -> bytes:
        path = self.timing_cache_path(gpu, trt_version)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    def save_timing_cache(self, gpu: GpuInfo, trt_version: str, data: bytes) -> Path:
        path = self.timing_cache_path(gpu, trt_version)
        atomic_write_bytes(path, bytes(data))
        return path
