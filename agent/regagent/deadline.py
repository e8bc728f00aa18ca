"""`Deadline`: an overall deadline for one HTTP exchange, whatever the peer does.

Socket timeouts bound each blocking call, not the exchange: a peer that drips a byte a second
keeps every `recv` short and the exchange endless. So the exchange's socket gives every blocking
call at most the time left before the deadline (and each read at most the read timeout); once
the deadline has passed, the next call raises `socket.timeout` and the deadline is `expired`.
Python applies a socket's timeout to a whole call (a `sendall`, one TLS record), so no call
outlives the deadline. Nothing runs beside the exchange: the timer thread per exchange this
replaces cost a thread start on every request (bench/footprint.py).

Both bounded HTTP clients use it: the one for local services (`regagent.health.http`) and the
one for Consul (`regagent.consul.transport`). The TLS handshake is bounded by the connect
timeout, as it was before.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

Clock = Callable[[], float]
Resolve = Callable[[Optional[float]], List[Tuple[Any, ...]]]  # timeout -> getaddrinfo's list


class Deadline:
    """The end of one exchange, `seconds` from now; reads also wait at most `read_timeout`."""

    def __init__(
        self, seconds: float, read_timeout: Optional[float] = None, clock: Clock = time.monotonic
    ) -> None:
        self.timeout = seconds
        self.read_timeout = seconds if read_timeout is None else read_timeout
        self.clock = clock
        self.at = clock() + seconds
        self.cut = False  # a call was refused: the deadline had passed
        self._resolve: Optional[Resolve] = None

    @property
    def expired(self) -> bool:
        """The deadline has passed: what the exchange got since is cut short."""
        return self.cut or self.clock() >= self.at

    def connection(
        self,
        host: str,
        port: int,
        connect_timeout: float,
        context: Optional[ssl.SSLContext] = None,
        resolve: Optional[Resolve] = None,
    ) -> http.client.HTTPConnection:
        """An HTTP connection (HTTPS with `context`) whose socket keeps this deadline once it
        is connected; connecting is bounded by `connect_timeout` (and the deadline).
        `resolve`: looks the host up within a timeout (`socket.getaddrinfo` takes none)."""
        timeout = min(connect_timeout, self.timeout)
        self._resolve = resolve
        conn: http.client.HTTPConnection
        if context is None:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            # Sets the class of every socket `context` wraps from now on (a context is kept and
            # shared: a pool's, the health checks'). Idempotent; a context handed to a Deadline
            # is one of regagent's own.
            context.sslsocket_class = _TLSSocket
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        conn._create_connection = self._create_connection  # type: ignore[attr-defined]
        return conn

    def keep(self, sock: Optional[socket.socket]) -> None:
        """Holds `sock` (a connected connection's) to the deadline from now on."""
        if isinstance(sock, (_PlainSocket, _TLSSocket)):
            sock.deadline = self

    def limit(self, sock: socket.socket, read: bool) -> None:
        """Before a blocking call on `sock`: the time it may take, or socket.timeout."""
        left = self.at - self.clock()
        if left <= 0:
            self.cut = True
            raise socket.timeout("the exchange's deadline has passed")
        sock.settimeout(min(self.read_timeout, left) if read else left)

    def _create_connection(
        self, address: Tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        if self._resolve is None:
            raw = socket.create_connection(address, timeout, source_address)
        else:
            raw = _connect_any(self._resolve(timeout), timeout)
        sock = _PlainSocket(fileno=raw.detach())
        sock.settimeout(timeout)
        return sock


def _connect_any(found: Sequence[Tuple[Any, ...]], timeout: Any) -> socket.socket:
    """The first of the looked-up addresses that accepts, as `socket.create_connection`
    tries them."""
    error: Optional[OSError] = None
    for family, kind, proto, _name, address in found:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error or OSError("getaddrinfo returned no address")


class _PlainSocket(socket.socket):
    """A socket whose blocking calls keep a `Deadline` (`Deadline.keep`)."""

    __slots__ = ("deadline",)

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.deadline: Optional[Deadline] = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if self.deadline is not None:
            self.deadline.limit(self, read=True)
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.deadline is not None:
            self.deadline.limit(self, read=True)
        return super().recv(bufsize, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if self.deadline is not None:
            self.deadline.limit(self, read=False)
        super().sendall(data, flags)


class _TLSSocket(ssl.SSLSocket):
    """The TLS socket of a `Deadline.connection`: its reads and writes keep the deadline."""

    deadline: Optional[Deadline] = None

    def recv_into(
        self, buffer: WriteableBuffer, nbytes: Optional[int] = None, flags: int = 0
    ) -> int:
        if self.deadline is not None:
            self.deadline.limit(self, read=True)
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self.deadline is not None:
            self.deadline.limit(self, read=True)
        return super().recv(buflen, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        if self.deadline is not None:
            self.deadline.limit(self, read=False)
        return super().send(data, flags)
