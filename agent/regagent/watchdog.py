"""`SocketWatchdog`: an overall deadline for one HTTP exchange, whatever the peer does.

Socket timeouts bound each `recv`, not the exchange: a peer that drips a byte a second keeps
every `recv` short and the exchange endless. The watchdog is a timer that shuts the socket down
at the deadline, so every blocking call on it returns at once. It holds the socket itself from
the moment it is connected, because `http.client` hands the socket over to the response (and
forgets it) when the answer says `Connection: close`. Both bounded HTTP clients use it: the one
for local services (`regagent.health.http`) and the one for Consul (`regagent.consul.transport`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Optional


class SocketWatchdog:
    """Shuts a connected socket down `timeout` seconds after it was created."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def hold(self, sock: Optional[socket.socket]) -> None:
        """The socket to shut down; at once if the deadline has already passed."""
        with self._lock:
            self._sock = sock
            fired = self._fired
        if fired:
            self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
        self._shutdown()

    def _shutdown(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def fired(self) -> bool:
        """The deadline passed and the socket was shut down: what came since is cut short."""
        return self._fired

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self.deadline

    def cancel(self) -> None:
        self._timer.cancel()
