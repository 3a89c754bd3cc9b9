"""The app passes --precision and --combiner through its settings to the pipeline options."""
from __future__ import annotations

import pytest

pytest.importorskip("PyQt6")


def test_precision_reaches_the_pipeline_options():
    from rtfer.ui.app import build_parser
    from rtfer.ui.settings import AppSettings

    assert build_parser().parse_args(["--precision", "int8"]).precision == "int8"
    assert AppSettings().to_options().precision == "auto"
    assert AppSettings(precision="fp32").to_options().precision == "fp32"


def test_combiner_reaches_the_pipeline_options():
    from rtfer.ui.app import build_parser
    from rtfer.ui.settings import AppSettings

    assert build_parser().parse_args(["--combiner", "balanced"]).combiner == "balanced"
    assert AppSettings().to_options().combiner == "default"
    assert AppSettings(combiner="balanced").to_options().combiner == "balanced"
