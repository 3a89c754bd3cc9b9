"""A live MJPEG-over-HTTP camera on loopback for tests (imported by tests; not a test module).

:class:`MJPEGServer` serves ``multipart/x-mixed-replace`` JPEG frames at a fixed rate on ``127.0.0.1``, as many IP
cameras do; :meth:`MJPEGServer.stop` drops every connection and closes the port (a camera that goes away) and
:meth:`MJPEGServer.start` brings it back on the same port. :attr:`MJPEGServer.served` counts the frames sent.
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOUNDARY = "rtferframe"


def jpeg_frames(n: int = 8, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    """``n`` small distinct JPEG images (a moving bar on grey)."""
    import cv2
    import numpy as np

    w, h = size
    out = []
    for i in range(n):
        image = np.full((h, w, 3), 90, np.uint8)
        x = (i * 7) % w
        image[:, x:x + 6] = (30, 200, 240)
        ok, data = cv2.imencode(".jpg", image)
        assert ok
        out.append(data.tobytes())
    return out


class MJPEGServer:
    def __init__(self, frames: list[bytes] | None = None, fps: float = 25.0, port: int = 0) -> None:
        self.frames = frames or jpeg_frames()
        self.fps = fps
        self.port = port
        self.requests = 0
        self.served = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MJPEGServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                owner.requests += 1
                with owner._lock:
                    owner._conns.add(self.connection)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    i = 0
                    while not owner._stopping.is_set():
                        data = owner.frames[i % len(owner.frames)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        owner.served += 1
                        i += 1
                        owner._stopping.wait(1.0 / owner.fps)
                except OSError:
                    pass
                finally:
                    with owner._lock:
                        owner._conns.discard(self.connection)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._stopping.clear()
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self._server = Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:  # the old socket is still closing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def wait_served(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` frames in all have been sent (a reader is connected and reading)."""
        deadline = time.monotonic() + timeout
        while self.served < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.served} of {n} frames were read from the test stream")
            time.sleep(0.02)

    def stop(self) -> None:
        """The camera goes away: every open connection is cut and the port refuses new ones."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MJPEGServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
