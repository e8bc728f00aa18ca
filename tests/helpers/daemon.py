"""`regagent run` as systemd runs it: a real process that reports to a notify socket this test
owns (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from helpers.consul import Daemon
from regagent.daemon import STOP_BOUND


class NotifySocket:
    """What systemd would receive: every datagram on a socket bound in a short temp dir."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ra-", dir="/tmp")  # AF_UNIX: 108 bytes max
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self) -> List[Tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def wait_for(
        self, wanted: Callable[[str], bool], after: int = 0, timeout: float = 30
    ) -> Tuple[int, str]:
        """(index, message) of the first message from index `after` that is `wanted`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, message) in enumerate(self.snapshot()):
                if index >= after and wanted(message):
                    return index, message
            time.sleep(0.05)
        raise AssertionError(f"no such message within {timeout}s: {self.snapshot()}")

    def pings(self) -> List[float]:
        return [at for at, message in self.snapshot() if message == "WATCHDOG=1"]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()
        shutil.rmtree(self.directory)


def has(field: str) -> Callable[[str], bool]:
    return lambda message: field in message.split("\n")


@contextlib.contextmanager
def notified_daemon(
    config: Path, watchdog_usec: Optional[int] = None
) -> Iterator[Tuple[Daemon, NotifySocket, Path]]:
    """`regagent run` with NOTIFY_SOCKET (and WATCHDOG_USEC) set; its log goes to a file so a
    full pipe can never block it. SIGTERM on exit, KILL if it does not end."""
    notify = NotifySocket()
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    env.pop("WATCHDOG_PID", None)  # unset: the pings are for whoever reads the socket
    env.pop("PROMETHEUS_DISABLE_CREATED_SERIES", None)  # the daemon sets its own (conftest.py)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log_path = config.parent / "daemon.log"
    with open(log_path, "w") as log_file:
        daemon = Daemon(
            [sys.executable, "-m", "regagent", "-c", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        yield daemon, notify, log_path
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=STOP_BOUND + 5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        notify.close()
