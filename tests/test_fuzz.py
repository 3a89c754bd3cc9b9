"""Seeded fuzzing of `rtfer analyze` (issue 23): small inputs made here, damaged by truncation, byte flips, zeroed
ranges and wrong extensions, plus image bombs and wrong containers. Goal: 0 internal errors, 0 hangs, 0 silent empty
results, and no stderr line that is not rtfer's own. The large set over the fixtures is benchmarks/fuzz_inputs.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _fuzz():
    return load_benchmark("fuzz_inputs")


@pytest.fixture(scope="module")
def fuzz():
    return _fuzz()


def test_mutations_are_seeded_and_cover_every_kind(tmp_path, fuzz):
    import random

    data = bytes(range(256)) * 20
    a = fuzz.mutants("clip.mp4", data, random.Random(3), 12)
    b = fuzz.mutants("clip.mp4", data, random.Random(3), 12)
    assert a == b and len(a) == 12
    kinds = {name.split("_", 2)[2].rsplit(".", 1)[0] for name, _ in a}
    assert kinds == {"truncate", "flip", "zero", "truncate_head", "flip_head", "wrong_ext"}
    assert all(m != data for name, m in a if "wrong_ext" not in name)
    assert {name for name, _ in fuzz.fixed_cases({})} >= {"bomb_20000.png", "bomb_screen.gif", "empty.mp4"}


def test_classify_outcomes(fuzz):
    assert fuzz.classify(0, "", 5) == ("ran", [])
    assert fuzz.classify(0, "", 0) == ("silent_empty", [])
    assert fuzz.classify(0, "rtfer: WARNING: x: only 0 frames", 0)[0] == "warned"
    assert fuzz.classify(2, "rtfer: error: cannot read x", 0) == ("error", [])
    assert fuzz.classify(1, "rtfer: internal error: KeyError: 0", 3)[0] == "internal"
    assert fuzz.classify(2, "libpng error: IDAT: CRC error\nrtfer: error: x", 0) == \
        ("error", ["libpng error: IDAT: CRC error"])


def test_seeded_fuzz_has_no_internal_error_hang_silent_empty_or_foreign_stderr(tmp_path, fuzz):
    seeds = fuzz.make_seeds(tmp_path / "seeds")
    cases = fuzz.build_cases(seeds, tmp_path / "cases", per_seed=4, seed=23)
    assert len(cases) >= 40
    results = fuzz.run_cases(cases, timeout=30, total_timeout=240, extra=["--bundle", "default", "--every", "2"])
    assert len(results) == len(cases)
    report = fuzz.summarize(results)
    outcomes = {r["outcome"] for r in results}
    assert not outcomes & set(fuzz.FAILURES), report
    assert not any(r["noise"] for r in results), report
    assert {"ran", "error"} <= outcomes  # the set exercises both sides
    bombs = [r for r in results if Path(r["case"]).name.startswith("bomb_")]
    assert len(bombs) == 4 and all(r["outcome"] == "error" and "megapixels" in r["stderr"] for r in bombs)


def test_quiet_runs_print_only_the_error_line(tmp_path, fuzz):
    """-q: a damaged PNG used to put libpng's own line on stderr beside rtfer's error."""
    import cv2
    import numpy as np

    good = tmp_path / "ok.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    data = bytearray(good.read_bytes())
    i = data.find(b"IDAT")
    data[i + 10:i + 60] = bytes(b ^ 0x5A for b in data[i + 10:i + 60])
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    results = fuzz.run_cases([bad], timeout=30, extra=["-q"])
    (r,) = results
    assert r["outcome"] == "error" and r["noise"] == []
    assert r["stderr"].count("\n") == 0 and "libpng error" in r["stderr"]  # named in rtfer's one line
