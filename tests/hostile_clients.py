"""Clients that misbehave on purpose against an HTTP endpoint, played for real over loopback:
slow-header clients that hold connections open, and a flood of connections closed with a reset.

Used by tests/test_metrics_endpoint.py and bench/telemetry.py. Every loop is bounded and every
socket is closed by `stop()` (or at the end of `rst_flood`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

REQUEST_LINE = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
_LINGER_ZERO = struct.pack("ii", 1, 0)  # close() sends a RST instead of a FIN


@dataclass
class _Slot:
    source: str
    sock: Optional[socket.socket] = None
    sent: int = 0  # bytes of the request sent on this connection


class SlowHeaderClients:
    """`count` clients that each open a connection, send the request line and then one header
    byte every `every` seconds, never finishing their headers; a connection the server closes
    is opened again on the next round. Sources are loopback addresses, used in turn."""

    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        every: float = 1.0,
        sources: Sequence[str] = ("127.0.0.2",),
    ) -> None:
        self.address = (host, port)
        self.every = every
        self.slots = [_Slot(sources[i % len(sources)]) for i in range(count)]
        self.connects = 0
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-header-clients", daemon=True)

    def start(self) -> SlowHeaderClients:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for slot in self.slots:
            self._drop(slot)

    def open_count(self) -> int:
        return sum(1 for slot in self.slots if slot.sock is not None)

    def _run(self) -> None:
        while not self._stop.is_set():
            for slot in self.slots:
                if self._stop.is_set():
                    return
                self._step(slot)
            self._stop.wait(self.every)

    def _step(self, slot: _Slot) -> None:
        if slot.sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((slot.source, 0))
            except OSError:
                sock.close()
                return
            if sock.connect_ex(self.address) not in (0, errno.EINPROGRESS):
                sock.close()
                return
            slot.sock, slot.sent = sock, 0
            self.connects += 1
            return
        try:
            if slot.sock.recv(4096) == b"":  # the server closed it
                self._lost(slot)
                return
        except (BlockingIOError, InterruptedError):
            pass  # nothing to read (or still connecting): open
        except OSError:  # reset or refused
            self._lost(slot)
            return
        chunk = REQUEST_LINE if slot.sent == 0 else b"X"
        try:
            slot.sent += slot.sock.send(chunk)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._lost(slot)

    def _lost(self, slot: _Slot) -> None:
        if slot.sent:
            self.closed_by_server += 1
        self._drop(slot)

    @staticmethod
    def _drop(slot: _Slot) -> None:
        if slot.sock is not None:
            with contextlib.suppress(OSError):
                slot.sock.close()
            slot.sock = None


@contextlib.contextmanager
def slow_header_clients(
    host: str, port: int, count: int, every: float = 1.0, sources: Sequence[str] = ("127.0.0.2",)
) -> Iterator[SlowHeaderClients]:
    clients = SlowHeaderClients(host, port, count, every, sources).start()
    try:
        yield clients
    finally:
        clients.stop()


def rst_flood(host: str, port: int, seconds: float, source: str = "127.0.0.3") -> int:
    """Connections opened and closed with a reset for `seconds`, each after sending nothing,
    half a request, or a whole one; returns how many were made."""
    payloads: List[bytes] = [b"", b"GET /metrics HTTP/1.0\r\n", b"GET /metrics HTTP/1.0\r\n\r\n"]
    made = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for payload in payloads:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(1.0)
                sock.bind((source, 0))
                sock.connect((host, port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                if payload:
                    sock.sendall(payload)
                made += 1
            except OSError:
                pass
            finally:
                sock.close()
    return made
