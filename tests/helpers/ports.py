"""Loopback ports for the servers a test starts."""

from __future__ import annotations

import socket
import time


def free_port(family: int = socket.AF_INET, addr: str = "127.0.0.1") -> int:
    """A port nothing listens on at the moment (the kernel's pick)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on 127.0.0.1:`port` (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")
