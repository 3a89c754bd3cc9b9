"""rtfer desktop application (PyQt6): thin widgets over the Qt-free :mod:`ui.controller`.

Importing ``ui`` or ``ui.controller`` does not import Qt; the widgets live in ``ui.widgets`` / ``ui.main_window``.
"""
from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
