"""The UI tests' own teardown (tests/ui/conftest.py): a window given to qtbot is not left to the garbage collector."""
from __future__ import annotations

import gc
import weakref

import pytest

pytest.importorskip("pytestqt")


def test_a_window_given_to_qtbot_lives_until_the_end_of_its_test(qtbot, qsettings, fake_factory):
    from PyQt6 import sip

    from rtfer.ui.main_window import MainWindow

    win = MainWindow(qsettings, pipeline_factory=fake_factory, cameras=[])
    qtbot.addWidget(win)
    ref = weakref.ref(win)
    del win
    gc.collect()  # a collection at any moment of the test must not destroy the window (pytest-qt holds a weakref)
    assert ref() is not None and not sip.isdeleted(ref())
