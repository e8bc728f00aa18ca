"""The `/metrics` endpoint on `telemetry.listen`: one thread, a bounded number of connections and
a deadline for every request, so that nothing a client does can deny it to Prometheus.

Anyone who reaches the port can connect (the documented listen is `0.0.0.0:9555`), and a
timeout per read is no deadline: four clients sending a header byte every few seconds held every
slot of the threaded server this replaces, indefinitely. Here:

- the request line and headers must be complete within `request_deadline` seconds of the
  connection, whatever the pace (a client dripping a byte a second is cut off like a silent
  one), and within `max_request_bytes`;
- at most `max_connections` connections are open at once, at most `max_per_peer` from one
  address; a new connection that would pass a bound closes the one that has waited longest for
  its request (that address's own first), so idle and slow sockets make room for a scraper
  instead of keeping it out;
- a request is answered in the turn of the loop in which its last header arrives, before any
  new connection is accepted, and the answer must be taken within `answer_deadline` seconds;
- the exposition is rendered at most once per `render_every` seconds.

One request per connection (HTTP/1.0, `Connection: close`). A client that resets or leaves is
closed without a word; anything unexpected is one log line, at most one a minute per kind.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import structlog
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from regagent.rules import split_hostport
from regagent.throttle import LogThrottle

log = structlog.get_logger(__name__)

Render = Callable[[], bytes]
Clock = Callable[[], float]

LISTEN_BACKLOG = 128
_RECV = 4096
_ACCEPT_PAUSE = 0.1  # seconds without accepting after the process ran out of file descriptors
_ERRORS_EVERY = 60.0  # seconds between two log lines of the same unexpected error


@dataclass(frozen=True)
class EndpointLimits:
    """The endpoint's bounds (module docstring); README's Metrics section names them."""

    max_connections: int = 64
    max_per_peer: int = 8
    request_deadline: float = 5.0
    answer_deadline: float = 10.0
    max_request_bytes: int = 8192
    render_every: float = 1.0


def listen_address(listen: str) -> Tuple[str, int, int]:
    """`telemetry.listen` as (host to bind, port, address family); `[v6]:port` for IPv6."""
    host, port = split_hostport(listen)
    if host.startswith("["):
        return host[1:-1], port, socket.AF_INET6
    return host, port, socket.AF_INET


class _CachedExposition:
    """The rendered metrics, re-rendered at most once per `every` seconds."""

    def __init__(self, render: Render, every: float, clock: Clock) -> None:
        self.render = render
        self.every = every
        self.clock = clock
        self._body = b""
        self._at = float("-inf")

    def body(self) -> bytes:
        now = self.clock()
        if now - self._at >= self.every:
            self._body = self.render()
            self._at = now
        return self._body


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    peer: str
    opened: float
    deadline: float
    received: bytearray
    answer: Optional[memoryview] = None  # set once the request is complete

    def waiting(self) -> bool:
        """Still waiting for its request (rather than taking its answer)."""
        return self.answer is None


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def http_answer(
    status: int, body: bytes, content_type: str, *, head: bool = False, allow: str = ""
) -> bytes:
    """A complete HTTP/1.0 answer that closes the connection."""
    lines = [
        f"HTTP/1.0 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    head_part = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head_part if head else head_part + body


def _text(status: int, text: str) -> bytes:
    return http_answer(status, text.encode(), "text/plain; charset=utf-8")


def header_end(received: bytes) -> int:
    """Where the request's headers end (after the blank line), or -1 while they have not."""
    for blank in (b"\r\n\r\n", b"\n\n"):
        at = received.find(blank)
        if at >= 0:
            return at + len(blank)
    return -1


class _Loop:
    """The endpoint's one thread: a selector over the listener, its clients and a wake-up."""

    def __init__(
        self, listener: socket.socket, render: Render, limits: EndpointLimits, clock: Clock
    ) -> None:
        self.listener = listener
        self.limits = limits
        self.clock = clock
        self.exposition = _CachedExposition(render, limits.render_every, clock)
        self.errors = LogThrottle(_ERRORS_EVERY, clock)
        self.selector = selectors.DefaultSelector()
        self.clients: Dict[int, _Client] = {}
        self.stopping = False
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    self._turn()
                except Exception as exc:  # a bug: one line a minute, and no busy loop
                    self._unexpected("metrics_endpoint_failed", exc)
                    time.sleep(0.1)
        finally:
            self._close_all()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"x")

    def _turn(self) -> None:
        if self._accept_paused_until and self.clock() >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        accept = False
        for key, mask in self.selector.select(self._timeout()):
            if key.data == "listener":
                accept = True
            elif key.data == "wake":
                self._drain_wake()
            else:
                self._ready(key.data, mask)
        # Requests completed in this turn have been answered; only now come new connections.
        if accept:
            self._accept_some()
        self._expire()

    def _timeout(self) -> Optional[float]:
        now = self.clock()
        ends = [client.deadline for client in self.clients.values()]
        if self._accept_paused_until > now:
            ends.append(self._accept_paused_until)
        if not ends:
            return None
        return max(0.0, min(ends) - now)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(512):
                pass

    # -- connections -------------------------------------------------------------------------

    def _accept_some(self) -> None:
        """At most half the table per turn, so a connection accepted now is read in the next
        turn before a flood of newer ones could push it out."""
        for _ in range(max(1, self.limits.max_connections // 2)):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listener stays readable: stop watching it for a while, or spin.
                    self.selector.unregister(self.listener)
                    self._accept_paused_until = self.clock() + _ACCEPT_PAUSE
                    self._unexpected("metrics_accept_failed", exc)
                return  # ECONNABORTED and the like: that client is gone already
            self._admit(sock, str(address[0]))

    def _admit(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        self._make_room(peer)
        now = self.clock()
        client = _Client(sock, peer, now, now + self.limits.request_deadline, bytearray())
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)
        self._read(client)  # the request is often there already

    def _make_room(self, peer: str) -> None:
        """Closes the connection a newcomer from `peer` displaces, if a bound is reached."""
        clients = list(self.clients.values())
        same_peer = [client for client in clients if client.peer == peer]
        if len(same_peer) >= self.limits.max_per_peer:
            self._close(self._longest_waiting(same_peer))
        elif len(clients) >= self.limits.max_connections:
            self._close(self._longest_waiting(clients))

    @staticmethod
    def _longest_waiting(clients: List[_Client]) -> _Client:
        """The one waiting longest for its request; one taking its answer only if none is."""
        return min(clients, key=lambda client: (not client.waiting(), client.opened))

    def _ready(self, client: _Client, mask: int) -> None:
        if client.sock.fileno() not in self.clients:
            return  # closed earlier in this turn
        try:
            if client.waiting():
                self._read(client)
            else:
                self._write(client)
        except Exception as exc:  # a bug: this client goes, the endpoint stays
            self._unexpected("metrics_request_failed", exc)
            self._close(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset, or anything else the client did: it is gone
            self._close(client)
            return
        if not data:
            self._close(client)
            return
        client.received += data
        end = header_end(bytes(client.received))
        if end < 0:
            if len(client.received) > self.limits.max_request_bytes:
                self._respond(client, _text(431, "request line and headers too long\n"))
            return
        self._respond(client, self._answer(bytes(client.received[:end])))

    def _respond(self, client: _Client, answer: bytes) -> None:
        client.answer = memoryview(answer)
        client.deadline = self.clock() + self.limits.answer_deadline
        self.selector.modify(client.sock, selectors.EVENT_WRITE, client)
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.answer is not None
        try:
            sent = client.sock.send(client.answer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.answer = client.answer[sent:]
        if not client.answer:
            self._close(client)  # what is in the send buffer is still delivered

    def _answer(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _text(400, "bad request\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return http_answer(
                405, b"GET or HEAD only\n", "text/plain; charset=utf-8", allow="GET, HEAD"
            )
        if target.split(b"?", 1)[0] not in (b"/metrics", b"/"):
            return _text(404, "not found; try /metrics\n")
        try:
            body = self.exposition.body()
        except Exception as exc:  # a collector's bug: say so, keep serving
            self._unexpected("metrics_render_failed", exc)
            return _text(500, "rendering the metrics failed; see the log\n")
        return http_answer(200, body, CONTENT_TYPE_LATEST, head=method == b"HEAD")

    def _expire(self) -> None:
        now = self.clock()
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self._close(client)

    def _close(self, client: _Client) -> None:
        fileno = client.sock.fileno()
        if self.clients.pop(fileno, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()

    def _close_all(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.selector.close()
        for sock in (self._wake_r, self._wake_w, self.listener):
            with contextlib.suppress(OSError):
                sock.close()

    def _unexpected(self, event: str, exc: BaseException) -> None:
        suppressed = self.errors.admit((event, type(exc).__name__))
        if suppressed is not None:
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(event, error=error, suppressed=suppressed)


class MetricsServer:
    """Serves `render()` at `/metrics` on `listen`, in a thread of its own."""

    def __init__(
        self,
        render: Render,
        listen: str,
        limits: EndpointLimits = EndpointLimits(),
        clock: Clock = time.monotonic,
    ) -> None:
        self.render = render
        self.listen = listen
        self.limits = limits
        self.clock = clock
        self._loop: Optional[_Loop] = None
        self._thread: Optional[threading.Thread] = None
        self._port: Optional[int] = None

    def start(self) -> bool:
        """Binds and serves; False (logged) when the address cannot be bound: the sync loop
        matters more than its metrics, and `up == 0` for the regagent target shows it."""
        host, port, family = listen_address(self.listen)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            log.error("metrics_listen_failed", listen=self.listen, error=str(exc))
            return False
        self._port = int(listener.getsockname()[1])
        self._loop = _Loop(listener, self.render, self.limits, self.clock)
        self._thread = threading.Thread(target=self._loop.run, name="regagent-metrics", daemon=True)
        self._thread.start()
        log.info("metrics_serving", listen=self.listen, path="/metrics")
        return True

    @property
    def port(self) -> Optional[int]:
        return self._port if self._loop is not None else None

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stopping = True
            loop.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
