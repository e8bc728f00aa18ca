"""A Consul server's host name looked up within the connect timeout (review of issue 23).

`getaddrinfo` takes no timeout: a resolver that does not answer holds the call for as long as
resolv.conf's timeouts and attempts add up (tens of seconds), outside every socket timeout, so
neither the request's deadline nor a hedged read's race bounded it. Here the lookup runs on a
thread of its own and the request waits at most its connect timeout ("name resolution timed
out"). At most one lookup per server is in flight: a request arriving while one hangs waits for
that one, so a dead resolver costs one thread per server, never one per request.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, List, Optional, Tuple

from regagent.threads import start_thread

AddrInfo = Tuple[Any, ...]  # what socket.getaddrinfo returns, one entry


class NameResolutionTimeout(socket.timeout):
    """The server's host name was not resolved within the connect timeout."""


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class BoundedResolver:
    """getaddrinfo of one host and port, bounded by the caller's timeout."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._pending: Optional[Future[List[AddrInfo]]] = None

    def __call__(self, timeout: Optional[float]) -> List[AddrInfo]:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._start()
            pending = self._pending
        try:
            return pending.result(timeout)
        except FutureTimeout:
            raise NameResolutionTimeout(f"{self.host}: name resolution timed out") from None

    def _start(self) -> Future[List[AddrInfo]]:
        future: Future[List[AddrInfo]] = Future()

        def lookup() -> None:
            try:
                found = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
            except BaseException as exc:  # handed to the waiting request
                future.set_exception(exc)
            else:
                future.set_result([tuple(info) for info in found])

        start_thread(lookup, f"regagent-resolve-{self.host}")
        return future
