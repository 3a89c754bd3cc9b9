"""Helpers for tests that drive the command line in-process (imported by tests; not a test module)."""
from __future__ import annotations


def run_cli(args, capsys):
    """``rtfer ARGS`` in this process: (exit code, stdout, stderr)."""
    from rtfer.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def bundle_args(bundle) -> list[str]:
    """Options that run ``bundle`` on ONNX Runtime on the CPU without a progress bar."""
    return ["--bundle", str(bundle), "--backend", "onnxruntime", "--device", "cpu", "--no-progress"]
