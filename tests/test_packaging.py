"""The wheel claims one import name, ``rtfer``: the folders ``ui/``, ``training/`` and ``engines/`` install as
``rtfer.ui``, ``rtfer.training`` and ``rtfer.engines`` (pyproject's ``package-dir``), and nothing in the repository
imports them under the old, collision-prone top-level names."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OLD = ("ui", "training", "engines")
#: folder -> import name of every folder that the project installs
FOLDERS = {"rtfer": "rtfer", "ui": "rtfer.ui", "training": "rtfer.training", "engines": "rtfer.engines"}
SKIP_DIRS = {".venv", "venv", "_data", ".git", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _project_files(*suffixes: str) -> list[Path]:
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if path.suffix in suffixes and path.is_file() and not SKIP_DIRS.intersection(rel.parts) \
                and not any(part.endswith(".egg-info") for part in rel.parts):
            out.append(path)
    return sorted(out)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path`` (module level and inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_python_file_imports_the_old_top_level_names():
    files = _project_files(".py")
    assert any(p.relative_to(REPO).parts[0] == "training" for p in files), "the repository walk found no files"
    bad = [f"{path.relative_to(REPO)}:{line}: {name}" for path in files for line, name in _imported_modules(path)
           if name.split(".")[0] in OLD]
    assert not bad, "import the rtfer.* names instead:\n" + "\n".join(bad)


def test_no_command_line_uses_the_old_module_names():
    pattern = re.compile(r"python3? -m (ui|training|engines)\b")
    bad = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
           for path in _project_files(".py", ".md", ".yaml", ".yml", ".toml", ".txt")
           for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, "use python -m rtfer.training / rtfer.engines:\n" + "\n".join(bad)


def test_dependencies_point_one_way():
    """The runtime (rtfer/) imports neither the app nor training; engines/ stays a leaf inside rtfer."""
    bad = []
    for path in _project_files(".py"):
        top = path.relative_to(REPO).parts[0]
        for line, name in _imported_modules(path):
            if top == "rtfer" and (_is_under(name, "rtfer.ui") or _is_under(name, "rtfer.training")):
                bad.append(f"{path.relative_to(REPO)}:{line}: the runtime imports {name}")
            if top == "engines" and _is_under(name, "rtfer") and not _is_under(name, "rtfer.engines"):
                bad.append(f"{path.relative_to(REPO)}:{line}: engines imports {name}")
    assert not bad, "\n".join(bad)


def test_pyproject_installs_every_folder_under_rtfer():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    st = config["tool"]["setuptools"]
    assert st["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    expected = {name + "".join("." + part for part in init.parent.relative_to(REPO / folder).parts)
                for folder, name in FOLDERS.items() for init in (REPO / folder).rglob("__init__.py")}
    assert set(st["packages"]) == expected, "pyproject's packages list and the folders with an __init__.py differ"
    assert all(_is_under(name, "rtfer") for name in st["packages"])
    assert config["project"]["scripts"]["rtfer-app"] == "rtfer.ui.app:main"
    assert all(value.startswith("rtfer.") for value in config["project"]["scripts"].values())
    assert set(st["package-data"]) <= set(st["packages"])


@pytest.mark.parametrize(("name", "path"), [
    ("rtfer.ui", "ui/__init__.py"), ("rtfer.ui.controller", "ui/controller.py"), ("rtfer.ui.app", "ui/app.py"),
    ("rtfer.training", "training/__init__.py"), ("rtfer.training.__main__", "training/__main__.py"),
    ("rtfer.engines", "engines/__init__.py"), ("rtfer.engines.__main__", "engines/__main__.py"),
])
def test_new_names_resolve_to_the_folders(name, path):
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"{name} is not importable: reinstall (pip install -e .)"
    assert Path(spec.origin).as_posix().endswith(path), spec.origin


def test_new_names_import_without_qt_or_torch_for_the_packages():
    """``import rtfer.ui`` (and its Qt-free controller) and ``import rtfer.engines`` load neither Qt nor torch."""
    code = ("import sys, rtfer.ui, rtfer.ui.controller, rtfer.engines, rtfer.training; "
            "heavy = [m for m in ('PyQt6', 'torch', 'tensorrt') if m in sys.modules]; "
            "assert not heavy, heavy; print(rtfer.ui.__name__, rtfer.training.__name__, rtfer.engines.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["rtfer.ui", "rtfer.training", "rtfer.engines"]


def test_the_install_does_not_provide_the_old_names(tmp_path):
    """Outside the repository (no folder on sys.path), ``ui``/``training``/``engines`` are not rtfer's folders."""
    code = ("import importlib.util, json; "
            f"print(json.dumps({{n: getattr(importlib.util.find_spec(n), 'origin', None) for n in {OLD!r}}}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr
    for name, origin in json.loads(out.stdout).items():
        assert origin is None or REPO not in Path(origin).resolve().parents, f"{name} resolves to {origin}"


def test_the_desktop_app_imports_under_its_new_name():
    pytest.importorskip("PyQt6.QtWidgets", exc_type=ImportError)
    from rtfer.ui.app import build_parser, main
    from rtfer.ui.main_window import MainWindow

    assert callable(main) and MainWindow.__module__ == "rtfer.ui.main_window"
    assert build_parser().prog == "rtfer-app"
