"""Exceptions that the CLI turns into one-line errors."""
from __future__ import annotations


class RtferError(Exception):
    """Base for errors a user can act on (bad input, bad bundle, missing extra)."""


class InputError(RtferError):
    """An input path, file or camera that cannot be read."""


class BundleError(RtferError):
    """A model bundle that is missing, malformed or inconsistent."""


class BackendError(RtferError):
    """A backend or device that is unavailable."""


class OutputError(RtferError):
    """An output path that cannot be written."""


def missing_extra(package: str, extra: str) -> ImportError:
    """ImportError naming the extra that provides ``package``."""
    return ImportError(f"{package} is required for this feature: pip install 'rtfer[{extra}]'")
