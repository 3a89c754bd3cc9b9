"""rtfer desktop application (PyQt6): thin widgets over the Qt-free :mod:`rtfer.ui.controller`.

Importing ``rtfer.ui`` or ``rtfer.ui.controller`` does not import Qt; the widgets live in ``rtfer.ui.widgets`` /
``rtfer.ui.main_window``.
"""
from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
