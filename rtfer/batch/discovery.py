"""Finding a batch's inputs (files, folders searched recursively, globs) and mirroring the input tree into output
paths under the out dir."""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Iterable

from rtfer.capture import VIDEO_EXTENSIONS  # what a directory or glob expands to (one list for the CLI and us)
from rtfer.errors import InputError

log = logging.getLogger(__name__)


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern is relative to: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def abs_path(path: str | Path) -> Path:
    """An absolute, normalised path that keeps symlinks (two links to one file are two inputs)."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def _videos_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                  key=lambda p: p.relative_to(folder).as_posix())


def discover_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, directories (recursive, video extensions) and globs into ``(file, root)`` pairs.

    ``root`` is what the output tree mirrors from: the directory itself, the fixed part of a glob, or a plain file's
    parent. Order is stable (inputs in the order given, each expanded in sorted order); a file reached twice is kept
    once, with its first root. Raises InputError for an input that matches nothing.
    """
    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()

    def add(file: Path, root: Path) -> None:
        key = abs_path(file)
        if key not in seen:
            seen.add(key)
            out.append((file, root))

    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _videos_under(path)
            if not found:
                log.warning("%s: no video files (%s) inside", path, ", ".join(sorted(VIDEO_EXTENSIONS)))
            for f in found:
                add(f, path)
        elif path.is_file():
            add(path, path.parent)
        elif glob.has_magic(text):
            root = _glob_root(os.path.expanduser(text))
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files: list[Path] = []
            for m in map(Path, matches):
                if m.is_dir():
                    files.extend(_videos_under(m))
                elif m.is_file() and m.suffix.lower() in VIDEO_EXTENSIONS:
                    files.append(m)
            if not files:
                raise InputError(f"{text}: the pattern matches no video files")
            for f in files:
                add(f, root)
        else:
            raise InputError(f"{text}: no such file or directory")
    return out


def output_path(file: str | Path, root: str | Path, out_dir: str | Path, suffix: str = ".csv") -> Path:
    """Where ``file``'s output goes: its path relative to ``root`` mirrored under ``out_dir``, with ``suffix``."""
    file, root = Path(file), Path(root)
    try:
        rel = abs_path(file).relative_to(abs_path(root))
    except ValueError:
        rel = Path(file.name)
    return Path(out_dir) / rel.with_suffix(suffix)
