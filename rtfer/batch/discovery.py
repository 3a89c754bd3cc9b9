"""Finding a batch's inputs (files, folders searched recursively, globs) and mirroring the input tree into output
paths under the out dir."""
from __future__ import annotations

import fnmatch
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
    """An absolute, normalised path that keeps symlinks (where an output goes mirrors the path as given)."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _videos_under(folder: Path) -> list[Path]:
    """Video files under ``folder``, recursively, without following directory symlinks (a link to ``/`` must not
    walk the disk, a link loop must not repeat the tree); file symlinks count (de-duplicated later by real path)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=None):
        dirnames.sort()
        base = Path(dirpath)
        found.extend(p for p in (base / name for name in filenames) if _is_video(p) and p.is_file())
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _hidden_ok(name: str, pattern: str) -> bool:
    """As glob: a wildcard matches a name starting with '.' only when the pattern starts with '.' too."""
    return not name.startswith(".") or pattern.startswith(".")


def _glob(base: Path, parts: list[str]):
    """The paths under ``base`` that match the pattern ``parts`` (one per path component), as ``glob.glob(...,
    recursive=True)`` finds them, except that ``**`` never descends into a directory symlink."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _glob(base, rest)  # ** matches zero folders
        for entry in _entries(base):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from _glob(base / entry.name, parts)
            elif not rest:  # a trailing ** matches files too
                yield base / entry.name
    elif glob.has_magic(head):
        for entry in _entries(base):
            if _hidden_ok(entry.name, head) and fnmatch.fnmatchcase(entry.name, head):
                if not rest:
                    yield base / entry.name
                elif entry.is_dir():  # one explicit level may pass a link: the pattern's depth bounds it
                    yield from _glob(base / entry.name, rest)
    else:
        path = base / head
        if not rest:
            if os.path.lexists(path):
                yield path
        elif path.is_dir():
            yield from _glob(path, rest)


def _expand_glob(pattern: str, root: Path) -> list[Path]:
    parts = list(Path(pattern).parts)
    fixed = 0  # the leading components without wildcards: ``root``
    while fixed < len(parts) - 1 and not glob.has_magic(parts[fixed]):
        fixed += 1
    files: list[Path] = []
    for m in _glob(root, parts[fixed:]):
        if m.is_symlink() and m.is_dir():
            log.warning("%s: a directory symlink; globs do not follow them (name the folder itself to include it)", m)
        elif m.is_dir():
            files.extend(_videos_under(m))
        elif m.is_file() and _is_video(m):
            files.append(m)
    return files


def real_path(path: str | Path) -> Path:
    """The file itself, all symlinks resolved: what two inputs must not share."""
    return Path(os.path.realpath(os.fspath(path)))


def discover_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, directories (recursive, video extensions) and globs into ``(file, root)`` pairs.

    ``root`` is what the output tree mirrors from: the directory itself, the fixed part of a glob, or a plain file's
    parent. Order is stable (inputs in the order given, each expanded in sorted order); a file reached twice (also
    through a symlink) is kept once, with its first root. Directory symlinks inside a folder or under ``**`` are not
    followed. Raises InputError for an input that matches nothing.
    """
    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()

    def add(file: Path, root: Path) -> None:
        key = real_path(file)
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
            pattern = os.path.expanduser(text)
            root = _glob_root(pattern)
            files = _expand_glob(pattern, root)
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
