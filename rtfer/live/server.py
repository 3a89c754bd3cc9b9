"""The live server (``--serve``): the live page, a WebSocket and a Server-Sent Events feed, the latest frame as JPEG.

Routes: ``/`` the live page (self-contained: no external reference), ``/ws`` WebSocket, ``/events`` Server-Sent
Events (the same messages, :mod:`rtfer.live.messages`), ``/frame.jpg`` the latest annotated frame (encoded on request,
at most :attr:`LiveServer.jpeg_interval_s` apart, so nothing is encoded while nobody looks).

aiohttp runs the server on an asyncio loop in a thread of its own. The run layer's writer thread calls
:meth:`LiveServer.append`, which serialises the frame once (only while a client is connected) and hands it to the loop
through a bounded hand-off; each client has its own bounded queue, from which the oldest frame messages are dropped
when the client reads too slowly (it is told how many with a ``skipped`` message), and a client whose send stays
blocked for :attr:`LiveServer.send_timeout_s` is disconnected. So a slow or stalled client neither slows the analysis
nor grows memory.

Access: bound to a loopback address and without a token, requests must name a loopback host (``Host:`` header; this
defeats DNS rebinding) and the feeds refuse cross-site pages (``Origin:``). With a token (required by
:func:`rtfer.live.check_serve` for any other address) every request must carry it, as ``Authorization: Bearer TOKEN``
or ``?token=TOKEN``; 401 otherwise.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from rtfer.errors import OutputError
from rtfer.live import is_loopback
from rtfer.live.messages import dumps, frame_message, hello_message, run_end_message, run_start_message
from rtfer.types import FrameResult

log = logging.getLogger(__name__)

CLIENT_QUEUE = 32  # messages waiting per client; beyond that the oldest frame messages are dropped
PENDING = 64  # messages between the writer thread and the server's loop
JPEG_MAX_WIDTH = 960
JPEG_QUALITY = 75


class _Client:
    """One connection's bounded queue of serialised messages."""

    def __init__(self, kind: str, peer: str, maxlen: int) -> None:
        self.kind = kind
        self.peer = peer
        self.queue: deque[tuple[str, bool]] = deque()
        self.maxlen = maxlen
        self.wake = asyncio.Event()
        self.skipped = 0
        self.reported = 0
        self.sent = 0
        self.max_queued = 0
        self.close = None  # a coroutine function that ends the connection politely (server shutdown)
        self.transport = None

    def offer(self, text: str, is_frame: bool) -> None:
        if len(self.queue) >= self.maxlen:
            index = next((i for i, (_, frame) in enumerate(self.queue) if frame), 0)
            del self.queue[index]  # the oldest frame message goes; run start/end markers stay
            self.skipped += 1
        self.queue.append((text, is_frame))
        self.max_queued = max(self.max_queued, len(self.queue))
        self.wake.set()


class LiveServer:
    """A sink that serves the run live over HTTP (see the module docstring). ``port`` 0 picks a free port
    (:attr:`url` says which)."""

    accepts_annotated = True  # the app's annotated frame is shown as is
    needs_images = True  # the run keeps each frame's image so that the page can show the latest one

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, *, token: str | None = None,
                 client_queue: int = CLIENT_QUEUE, send_timeout_s: float = 10.0, jpeg_interval_s: float = 0.2,
                 heartbeat_s: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.token = token or None
        self.client_queue = max(1, client_queue)
        self.send_timeout_s = send_timeout_s
        self.jpeg_interval_s = jpeg_interval_s
        self.heartbeat_s = heartbeat_s
        self.bound_port: int | None = None
        self.frames = 0  # frames appended
        self.published = 0  # frame messages serialised (only while a client was connected)
        self.jpegs = 0  # JPEGs encoded
        self.handoff_dropped = 0
        self.disconnected_slow = 0
        self.errors = 0
        self._clients: set[_Client] = set()
        self._snapshot: tuple[_Client, ...] = ()  # the clients, for other threads (stats)
        self._n_clients = 0  # read by the writer thread without the loop
        self._latest: tuple[int, FrameResult, Any] | None = None
        self._run: dict | None = None
        self._pending: deque[tuple[str, bool]] = deque(maxlen=PENDING)
        self._lock = threading.Lock()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._jpeg_at = 0.0
        self._jpeg_lock: asyncio.Lock | None = None
        self._page: bytes | None = None
        self._closed = False
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle (any thread) ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port if self.bound_port is not None else self.port}/"

    def open(self) -> LiveServer:
        """Start serving; raises :class:`~rtfer.errors.OutputError` (one line) when the address cannot be bound."""
        if self._thread is not None:
            return self
        self._page = resources.files("rtfer.live").joinpath("page.html").read_bytes()
        self._thread = threading.Thread(target=self._serve, name="rtfer-live-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            exc = self._start_error
            errno = getattr(exc, "errno", None)
            if isinstance(errno, int) and errno > 0:
                reason = os.strerror(errno)
            else:  # a host name that does not resolve (socket.gaierror) and the like
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise OutputError(f"--serve cannot listen on {self.host}:{self.port}: {reason}") from None
        log.info("live page at %s (WebSocket %sws, Server-Sent Events %sevents)%s", self.url, self.url, self.url,
                 "; requests need the token" if self.token else "")
        return self

    def close(self, flush_s: float = 2.0) -> None:
        """Deliver what is queued (up to ``flush_s``), close every connection and stop the server."""
        if self._closed or self._loop is None or self._thread is None:
            self._closed = True
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(flush_s), self._loop).result(timeout=flush_s + 10)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.debug("live server shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> LiveServer:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sink interface (the writer thread) ------------------------------------------------------------------------
    def append(self, result: FrameResult, annotated=None) -> None:
        self.frames += 1
        self._latest = (self.frames, result, annotated)
        if self._n_clients:
            try:
                text = dumps(frame_message(result, self.frames))
            except (ValueError, TypeError) as exc:  # a value JSON cannot carry (NaN): skip it, never stop the run
                self._failed(exc)
                return
            self.published += 1
            self._publish(text, True)

    def run_started(self, info: dict) -> None:
        try:
            self._run = run_start_message(info)
            self._publish(dumps(self._run), False)
        except (ValueError, TypeError) as exc:
            self._failed(exc)

    def run_finished(self, stats: Any, status: str) -> None:
        source = (self._run or {}).get("source") or str(getattr(stats, "input", ""))
        try:
            self._publish(dumps(run_end_message(source, status, stats.frames, stats.fps)), False)
        except (ValueError, TypeError) as exc:
            self._failed(exc)
        self._run = None

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("live server: a message could not be built (%s); such messages are skipped", exc)

    def stats(self) -> dict:
        """Counters for tests and benchmarks: per client (kind, sent, skipped, max_queued) and overall."""
        return {"frames": self.frames, "published": self.published, "jpegs": self.jpegs,
                "handoff_dropped": self.handoff_dropped, "disconnected_slow": self.disconnected_slow,
                "clients": [{"kind": c.kind, "sent": c.sent, "skipped": c.skipped, "max_queued": c.max_queued,
                             "queued": len(c.queue)} for c in self._snapshot]}

    def _publish(self, text: str, is_frame: bool) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.handoff_dropped += 1
            self._pending.append((text, is_frame))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._dispatch)
        except RuntimeError:  # the loop has stopped
            pass

    # -- the server's loop -----------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for client in self._clients:
            for text, is_frame in items:
                client.offer(text, is_frame)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported by open()
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application(middlewares=[self._make_guard()])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/events", self._events)
        app.router.add_get("/frame.jpg", self._frame_jpg)
        self._jpeg_lock = asyncio.Lock()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.bound_port = int(runner.addresses[0][1])

    async def _shutdown(self, flush_s: float) -> None:
        self._dispatch()
        for client in self._clients:
            client.offer(dumps({"type": "bye"}), False)  # the page stops reconnecting
        # Deliver what is queued while the clients take it: up to flush_s, less once they stop making progress
        deadline = time.monotonic() + flush_s
        progress, idle_since = -1, time.monotonic()
        while any(c.queue for c in self._clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            sent = sum(c.sent for c in self._clients)
            if sent != progress:
                progress, idle_since = sent, time.monotonic()
            elif time.monotonic() - idle_since > 0.3:
                break
        for client in list(self._clients):
            if client.queue and client.transport is not None:
                client.transport.abort()  # not reading: a polite close would wait for it too
            elif client.close is not None:
                try:
                    await asyncio.wait_for(client.close(), 1.0)
                except Exception:  # noqa: BLE001 - it is going away anyway
                    pass
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- access ----------------------------------------------------------------------------------------------------
    def _authorized(self, request) -> tuple[int, str] | None:
        """None when ``request`` may proceed, else (HTTP status, reason)."""
        if self.token:
            supplied = request.query.get("token", "")
            header = request.headers.get("Authorization", "")
            if header[:7].lower() == "bearer ":
                supplied = header[7:].strip()
            if not supplied or not hmac.compare_digest(supplied.encode(), self.token.encode()):
                return 401, "a valid token is required (Authorization: Bearer TOKEN or ?token=TOKEN)"
            return None
        hostname = urlsplit("//" + (request.host or "")).hostname or ""
        if not is_loopback(hostname):
            return 403, "this server answers only requests to a loopback address"
        origin = request.headers.get("Origin")
        if origin and request.path in ("/ws", "/events") and urlsplit(origin).netloc != request.host:
            return 403, "cross-site requests are refused"
        return None

    def _make_guard(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            refused = self._authorized(request)
            if refused is not None:
                status, reason = refused
                headers = {"WWW-Authenticate": 'Bearer realm="rtfer"'} if status == 401 else {}
                return web.Response(status=status, text=reason + "\n", headers=headers)
            return await handler(request)

        return guard

    # -- routes ----------------------------------------------------------------------------------------------------
    async def _index(self, request):
        from aiohttp import web

        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
               "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": csp,
                                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    def _register(self, kind: str, request) -> _Client:
        client = _Client(kind, str(request.remote), self.client_queue)
        client.transport = request.transport
        client.offer(dumps(hello_message(self._run)), False)
        self._clients.add(client)
        self._snapshot, self._n_clients = tuple(self._clients), len(self._clients)
        log.info("live %s client connected from %s", kind, client.peer)
        return client

    def _unregister(self, client: _Client) -> None:
        self._clients.discard(client)
        self._snapshot, self._n_clients = tuple(self._clients), len(self._clients)
        log.info("live %s client %s left (%d messages sent, %d skipped)", client.kind, client.peer, client.sent,
                 client.skipped)

    async def _pump(self, client: _Client, send, request, keepalive=None) -> None:
        """Send ``client``'s queue until cancelled; a send blocked for ``send_timeout_s`` drops the connection."""
        try:
            while True:
                if keepalive is None:
                    await client.wake.wait()
                else:
                    try:
                        await asyncio.wait_for(client.wake.wait(), timeout=15.0)
                    except asyncio.TimeoutError:
                        await asyncio.wait_for(keepalive(), self.send_timeout_s)
                        continue
                client.wake.clear()
                while client.queue:
                    if client.skipped > client.reported:
                        lost = client.skipped - client.reported
                        client.reported = client.skipped
                        await asyncio.wait_for(send(dumps({"type": "skipped", "count": lost,
                                                           "total": client.skipped})), self.send_timeout_s)
                    text, _ = client.queue.popleft()
                    await asyncio.wait_for(send(text), self.send_timeout_s)
                    client.sent += 1
        except asyncio.TimeoutError:
            self.disconnected_slow += 1
            log.warning("live %s client %s stopped reading; disconnected", client.kind, client.peer)
        except (ConnectionError, RuntimeError) as exc:  # gone, or closing
            log.debug("live %s client %s: %s", client.kind, client.peer, exc)
        transport = request.transport
        if transport is not None:
            transport.abort()

    def _track(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ws(self, request):
        from aiohttp import web

        ws = web.WebSocketResponse(heartbeat=self.heartbeat_s, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = self._register("websocket", request)
        client.close = lambda: ws.close(code=1001, message=b"rtfer stopped")
        pump = self._track(self._pump(client, ws.send_str, request))
        try:
            async for _ in ws:  # the feed is one-way; reading keeps pings and the close handshake going
                pass
        finally:
            pump.cancel()
            self._unregister(client)
        return ws

    async def _events(self, request):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        client = self._register("events", request)

        async def send(text: str) -> None:
            await response.write(b"data: " + text.encode() + b"\n\n")

        async def keepalive() -> None:
            await response.write(b": keepalive\n\n")

        try:
            await self._track(self._pump(client, send, request, keepalive))
        except asyncio.CancelledError:
            pass
        finally:
            self._unregister(client)
        return response

    async def _frame_jpg(self, request):
        from aiohttp import web

        latest = self._latest
        headers = {"Cache-Control": "no-store"}
        if latest is None:
            return web.Response(status=204, headers=headers)
        async with self._jpeg_lock:
            cached = self._jpeg
            fresh = time.monotonic() - self._jpeg_at < self.jpeg_interval_s
            if cached is None or (cached[0] != latest[0] and not fresh):
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(None, _encode_jpeg, latest[1], latest[2])
                if body is None and cached is None:
                    return web.Response(status=204, headers=headers)
                if body is not None:
                    self._jpeg, self._jpeg_at = (latest[0], body), time.monotonic()
                    self.jpegs += 1
            seq, body = self._jpeg
        return web.Response(body=body, content_type="image/jpeg", headers={**headers, "X-Frame-Seq": str(seq)})


def _encode_jpeg(result: FrameResult, annotated) -> bytes | None:
    """The frame, annotated (unless the app already did), at most JPEG_MAX_WIDTH wide, as JPEG bytes."""
    import cv2

    image = annotated
    if image is None:
        if result.image is None:
            return None
        from rtfer.annotate import annotate

        image = annotate(result.image, result)
    height, width = image.shape[:2]
    if width > JPEG_MAX_WIDTH:
        image = cv2.resize(image, (JPEG_MAX_WIDTH, round(height * JPEG_MAX_WIDTH / width)),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else None
