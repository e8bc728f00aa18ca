"""The systemd notify protocol: datagrams to a socket this test owns, no socket, a broken one."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from regagent.notify import Notifier, socket_address, status_field, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """An AF_UNIX datagram socket bound in a short temporary directory (paths max 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="ra-notify-", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory)


def received(sock: socket.socket, count: int) -> List[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def test_messages_arrive_as_one_datagram_each(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    assert notifier.ready("in sync: 2 services via 127.0.0.1:8500")
    assert notifier.status("no Consul server reachable\n(3 tried)")
    assert notifier.reloading()
    assert notifier.watchdog()
    assert notifier.stopping()
    ready, status, reloading, watchdog, stopping = received(notify_socket, 5)
    assert ready == "READY=1\nSTATUS=in sync: 2 services via 127.0.0.1:8500"
    assert status == "STATUS=no Consul server reachable (3 tried)"  # one line, always
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and lines[1].split("=")[1].isdigit()
    assert (watchdog, stopping) == ("WATCHDOG=1", "STOPPING=1")
    notifier.close()


def test_abstract_address() -> None:
    name = f"regagent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_is_not_an_error_and_a_dead_one_never_raises(tmp_path: Path) -> None:
    quiet = Notifier.from_env({})
    assert not quiet.enabled
    assert not quiet.ready()
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.watchdog()
    assert not gone.watchdog()  # logged once, never raised


def test_socket_address_forms() -> None:
    assert socket_address("@sd") == "\0sd"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("relative/path") is None  # sd_notify ignores it too
    assert socket_address(None) is None and socket_address("") is None


def test_watchdog_interval_is_half_and_only_for_our_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}) == 60.0
    ours = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(ours) == 1.0
    assert watchdog_interval({**ours, "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_status_is_one_bounded_line() -> None:
    assert status_field(None) == ()
    assert status_field("a\n b") == ("STATUS=a b",)
    assert len(status_field("x" * 500)[0]) == len("STATUS=") + 200
