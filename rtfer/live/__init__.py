"""Live outputs: results that other programs use while a run goes on.

- :mod:`rtfer.live.lsl` — :class:`~rtfer.live.lsl.LSLSink`, a Lab Streaming Layer outlet (one sample per face per
  frame, time-stamped with the frame's capture time on the LSL clock) and a marker stream for run start and end;
- :mod:`rtfer.live.server` — :class:`~rtfer.live.server.LiveServer`, a small HTTP server: the live page at ``/``, one
  JSON message per frame on a WebSocket (``/ws``) and as Server-Sent Events (``/events``), the latest annotated frame
  at ``/frame.jpg``;
- :mod:`rtfer.live.messages` — the JSON messages and their schema (:data:`~rtfer.live.messages.SCHEMA_VERSION`).

Each live output is a sink of the run layer (:class:`rtfer.run.Run`'s caller-owned ``sinks``): appended to on the
writer thread, opened before the first input and closed after the last, so one outlet or server spans every input of
a command and every run of an app session. Their libraries (pylsl, aiohttp) are the ``live`` extra, imported only when
an option asks for them.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
from contextlib import ExitStack
from typing import Any

from rtfer.errors import RtferError

EXTRA_HINT = "pip install 'rtfer[live]'"
DEFAULT_LSL_NAME = "rtfer"
TOKEN_ENV = "RTFER_SERVE_TOKEN"


def require(module: str, option: str):
    """Import ``module`` for ``option``, or raise an ImportError whose one line names the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{option} needs the {module} package ({exc}): {EXTRA_HINT}") from None
    except (OSError, RuntimeError) as exc:  # pylsl without a loadable liblsl raises these
        raise ImportError(f"{option}: {module} cannot be loaded ({' '.join(str(exc).split())}): {EXTRA_HINT}") \
            from None


def parse_address(text: str) -> tuple[str, int]:
    """``--serve [HOST:]PORT`` -> ``(host, port)``; HOST defaults to 127.0.0.1, an IPv6 host is written ``[::1]``.
    Port 0 picks a free port."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise RtferError(f"--serve {text}: write an IPv6 address in brackets, e.g. [::1]:8765")
    if not host:
        host = "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise RtferError(f"--serve {text}: expected [HOST:]PORT, e.g. 8765 or 0.0.0.0:8765") from None
    if not 0 <= number <= 65535:
        raise RtferError(f"--serve {text}: the port must be between 0 and 65535")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve(address: str, token: str | None) -> tuple[str, int]:
    """The address to bind, refusing a non-loopback one without a token (anyone on the network could watch)."""
    host, port = parse_address(address)
    if token is not None and not token.strip():
        raise RtferError("--serve-token must not be empty")
    if not is_loopback(host) and not token:
        raise RtferError(f"--serve {address}: binding {host} (reachable from other machines) needs --serve-token "
                         f"TOKEN (or ${TOKEN_ENV}); every request must then carry it")
    return host, port


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """``--lsl [NAME]``, ``--serve [HOST:]PORT`` and ``--serve-token TOKEN`` (the CLI and the app share them)."""
    parser.add_argument("--lsl", nargs="?", const=DEFAULT_LSL_NAME, metavar="NAME",
                        help=f"publish a Lab Streaming Layer outlet NAME (default {DEFAULT_LSL_NAME}): one sample per "
                             f"face per frame, time-stamped with the capture time on the LSL clock, and a marker "
                             f"stream NAME-markers for run start/end (needs the live extra)")
    parser.add_argument("--serve", metavar="[HOST:]PORT",
                        help="serve a live page at http://HOST:PORT/ with a WebSocket (/ws) and Server-Sent Events "
                             "(/events) feed, one JSON message per frame; HOST defaults to 127.0.0.1 (needs the live "
                             "extra)")
    parser.add_argument("--serve-token", metavar="TOKEN",
                        help=f"require TOKEN on every request (Authorization: Bearer TOKEN or ?token=TOKEN); "
                             f"needed to bind an address other than localhost (default: ${TOKEN_ENV})")


def open_live_sinks(stack: ExitStack, *, lsl: str | None = None, serve: str | None = None,
                    serve_token: str | None = None) -> list[Any]:
    """Open the live outputs asked for on ``stack`` (closed when it unwinds) and return them as sinks.

    Everything that can fail (a missing extra, a refused address, a port in use) fails here, before any work.
    """
    sinks: list[Any] = []
    token = serve_token if serve_token is not None else (os.environ.get(TOKEN_ENV) or None)
    if serve is not None:
        host, port = check_serve(serve, token)
        require("aiohttp", "--serve")
        from rtfer.live.server import LiveServer

        sinks.append(stack.enter_context(LiveServer(host, port, token=token)))
    elif serve_token is not None:
        raise RtferError("--serve-token is only used with --serve")
    if lsl is not None:
        if not lsl.strip():
            raise RtferError("--lsl NAME must not be empty")
        require("pylsl", "--lsl")
        from rtfer.live.lsl import LSLSink

        sinks.append(stack.enter_context(LSLSink(lsl)))
    return sinks


__all__ = ["DEFAULT_LSL_NAME", "EXTRA_HINT", "TOKEN_ENV", "add_arguments", "check_serve", "is_loopback",
           "open_live_sinks", "parse_address", "require"]
