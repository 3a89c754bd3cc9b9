"""What a user reads: errors name the CLI flags, empty listings say so, missing extras give a hint, and Ray's
start-up lines come before the batch progress bar."""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from cli_helpers import run_cli


@pytest.mark.parametrize("flag, option", [("--every", "every"), ("--max-faces", "max_faces"),
                                          ("--batch-frames", "batch_frames")])
def test_option_errors_name_the_flag(flag, option, tmp_path, capsys):
    from rtfer.pipeline import AnalyzeOptions

    with pytest.raises(ValueError, match=f"^{flag} "):
        AnalyzeOptions(**{option: 0})
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    code, _, err = run_cli(["analyze", str(img), "-o", str(tmp_path / "a.csv"), flag, "0", "--no-progress"], capsys)
    assert code == 2 and err.strip() == f"rtfer: error: {flag} must be >= 1, got 0"


def test_engines_list_says_when_the_cache_is_empty(tmp_path, capsys):
    from rtfer.engines.__main__ import main

    assert main(["list", "--cache", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no cached engines in ") and "python -m rtfer.engines build" in out


def test_training_without_torch_gives_a_one_line_hint(monkeypatch, capsys):
    from rtfer.training import __main__ as training_main

    def missing(_a):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setitem(training_main.COMMANDS, "train", missing)
    assert training_main.main(["train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train needs torch" in err[0] and "pip install 'rtfer[train]'" in err[0]

    def other(_a):
        raise ModuleNotFoundError("No module named 'rtfer.nothing'", name="rtfer.nothing")

    monkeypatch.setitem(training_main.COMMANDS, "train", other)
    with pytest.raises(ModuleNotFoundError):  # a bug in rtfer itself is not hidden behind an install hint
        training_main.main(["train"])


def test_training_help_has_no_rst_markup(capsys):
    from rtfer.training.__main__ import build_parser

    text = build_parser().format_help()
    assert "``" not in text and "Train, evaluate" in text


def test_unwritable_folder_is_worded_like_a_failed_write(tmp_path, monkeypatch):
    from rtfer.errors import OutputError
    from rtfer.sinks import base

    monkeypatch.setattr(base.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(base.os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(OutputError, match="summary .*: Read-only file system$"):
        base.prepare_output_path(tmp_path / "s.png", "summary", written_at_end=True)
    monkeypatch.setattr(base.os, "statvfs", lambda p: SimpleNamespace(f_flag=0))
    with pytest.raises(OutputError, match=f"report .*: {os.strerror(errno.EACCES)}$"):
        base.prepare_output_path(tmp_path / "r.html", "report", written_at_end=True)


def test_ray_connects_before_the_first_result_is_asked_for(monkeypatch):
    """The driver creates its progress bar after run_ray returns: Ray must have started (and logged) by then."""
    from rtfer.batch import ray as batch_ray
    from rtfer.batch.common import VideoTask

    events = []

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            events.append("init")

        def cluster_resources(self):
            return {"CPU": 2.0}

        def shutdown(self):
            events.append("shutdown")

    monkeypatch.setattr(batch_ray, "import_ray", lambda: FakeRay())
    results = batch_ray.run_ray([VideoTask("a.mp4", "a.csv")], None, lambda t, o: None, "local",
                                on_slots=lambda n: events.append(f"slots {n}"))
    assert events == ["init", "slots 2"]
    results.close()  # never started: nothing submitted

    class TooSmall(FakeRay):
        def cluster_resources(self):
            return {"CPU": 0.5}

    events.clear()
    monkeypatch.setattr(batch_ray, "import_ray", lambda: TooSmall())
    from rtfer.errors import BackendError

    with pytest.raises(BackendError, match="cannot fit one task"):
        batch_ray.run_ray([VideoTask("a.mp4", "a.csv")], None, lambda t, o: None, "local")
    assert events == ["init", "shutdown"]  # the instance it started is not left running
