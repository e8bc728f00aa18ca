"""The systemd notify protocol, with the standard library only (no python3-systemd).

A message is one datagram of `KEY=value` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET`
(a path, or an abstract address written `@name`). Without the variable there is no service
manager listening, which is not an error: every method is then a no-op. Sending never raises
and never blocks the loop (the socket is non-blocking): a failure is logged once, at debug,
since a missing systemd is routine (a terminal, a container) and a broken one shows in
`systemctl status` anyway.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional, Tuple

import structlog

log = structlog.get_logger(__name__)


def socket_address(value: Optional[str]) -> Optional[str]:
    """`$NOTIFY_SOCKET` as an address for `sendto`: `@name` is the abstract `\\0name`;
    anything that is neither absolute nor abstract is ignored, as sd_notify does."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled
    advises; None when the watchdog is off or meant for another process (`$WATCHDOG_PID`)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends state changes to the service manager; a no-op without `$NOTIFY_SOCKET`."""

    def __init__(self, address: Optional[str] = None) -> None:
        self.address = address
        self._socket: Optional[socket.socket] = None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        return cls(socket_address(env.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `fields` (each `KEY=value`); True if it was handed to the socket."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.debug("notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        return self.send("READY=1", *status_field(status))

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to tell this reload from the
        # next; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        return self.send(*status_field(text))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def status_field(text: Optional[str]) -> Tuple[str, ...]:
    """`STATUS=` with one line of at most 200 characters (systemctl shows one line)."""
    if text is None:
        return ()
    line = " ".join(text.split())
    return (f"STATUS={line[:200]}",)
