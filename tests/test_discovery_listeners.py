"""Listener discovery: the netlink request layout, message parsing, /proc parsing, dedupe."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from structlog.testing import capture_logs

from regagent.discovery import listeners as mod
from regagent.discovery.listeners import (
    Listener,
    ListenerReader,
    Listing,
    build_request,
    dedupe,
    listening_sockets,
    listening_sockets_proc,
    parse_diag_msg,
    parse_proc_net_tcp,
)
from regagent.netlink import iter_messages

DATA = Path(__file__).parent / "data" / "discovery"
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="fixture tables were written on a little-endian host"
)


def test_request_is_a_listen_only_dump_of_tcp() -> None:
    request = build_request(socket.AF_INET6, seq=7)
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert (length, len(request)) == (16 + 56, 72)  # nlmsghdr + inet_diag_req_v2
    assert (msg_type, seq, pid) == (20, 7, 0)  # SOCK_DIAG_BY_FAMILY
    assert flags == 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
    family, protocol, ext, pad, states = struct.unpack_from("=BBBBI", request, 16)
    assert (family, protocol, ext, pad) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 0)
    assert states == 1 << 10  # TCP_LISTEN only: the kernel skips established sockets


def _diag_msg(  # noqa: PLR0917 - mirrors the kernel struct fields
    family: int, state: int, address: str, port: int, uid: int, inode: int
) -> bytes:
    raw = socket.inet_pton(family, address).ljust(16, b"\0")
    return (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack("!HH16s16s", port, 0, raw, b"\0" * 16)
        + struct.pack("=III", 0, 0, 0)
        + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    )


def test_parse_diag_msg_reads_address_port_uid_inode() -> None:
    parsed = parse_diag_msg(_diag_msg(socket.AF_INET, 10, "127.0.0.1", 9100, 112, 4242))
    assert parsed == Listener("127.0.0.1", 9100, socket.AF_INET, 4242, 112)
    parsed6 = parse_diag_msg(_diag_msg(socket.AF_INET6, 10, "::1", 9104, 0, 77))
    assert parsed6 == Listener("::1", 9104, socket.AF_INET6, 77, 0)


def test_parse_diag_msg_ignores_other_states_and_short_records() -> None:
    assert parse_diag_msg(_diag_msg(socket.AF_INET, 1, "127.0.0.1", 9100, 0, 1)) is None
    assert parse_diag_msg(b"\x02\x0a") is None


def test_iter_messages_walks_aligned_messages() -> None:
    first = struct.pack("=IHHII", 16 + 3, 20, 2, 5, 0) + b"abc" + b"\0"  # padded to 4
    done = struct.pack("=IHHII", 20, 3, 2, 5, 0) + b"\0\0\0\0"
    messages = list(iter_messages(first + done))
    assert [(m[0], m[2], m[3]) for m in messages] == [(20, 5, b"abc"), (3, 5, b"\0\0\0\0")]


def test_iter_messages_rejects_truncation() -> None:
    with pytest.raises(OSError):
        list(iter_messages(struct.pack("=IHHII", 64, 20, 0, 1, 0)))


@little_endian_only
def test_proc_tables_parse_listeners_only() -> None:
    with open(DATA / "proc_net_tcp", encoding="ascii") as table:
        v4 = list(parse_proc_net_tcp(table, socket.AF_INET))
    assert [(x.address, x.port, x.inode, x.uid) for x in v4] == [
        ("0.0.0.0", 9100, 31337, 112),
        ("127.0.0.1", 9104, 4242, 0),
        ("127.0.0.1", 9104, 4243, 0),
        ("10.0.0.10", 8080, 5555, 33),
    ]
    with open(DATA / "proc_net_tcp6", encoding="ascii") as table:
        v6 = list(parse_proc_net_tcp(table, socket.AF_INET6))
    assert [(x.address, x.port) for x in v6] == [
        ("::", 9100),
        ("::1", 9105),
        ("::ffff:127.0.0.1", 9106),
    ]
    assert v6[2].is_loopback and not v6[2].is_wildcard


@little_endian_only
def test_proc_root_layout(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text((DATA / "proc_net_tcp").read_text())
    found = listening_sockets_proc(str(tmp_path))  # tcp6 missing: IPv6 disabled is fine
    assert [(x.address, x.port) for x in found] == [
        ("10.0.0.10", 8080),
        ("0.0.0.0", 9100),
        ("127.0.0.1", 9104),
    ]
    assert found[2].inode == 4242  # SO_REUSEPORT twins keep the lowest inode


def test_proc_root_without_tables_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        listening_sockets_proc(str(tmp_path))


def test_dedupe_sorts_and_merges() -> None:
    items = [
        Listener("::", 9100, socket.AF_INET6, 9),
        Listener("0.0.0.0", 9100, socket.AF_INET, 8),
        Listener("0.0.0.0", 9100, socket.AF_INET, 3),
        Listener("127.0.0.1", 22, socket.AF_INET, 1),
    ]
    assert dedupe(items) == [
        Listener("127.0.0.1", 22, socket.AF_INET, 1),
        Listener("0.0.0.0", 9100, socket.AF_INET, 3),
        Listener("::", 9100, socket.AF_INET6, 9),
    ]


def test_listener_address_properties() -> None:
    assert Listener("0.0.0.0", 1, socket.AF_INET, 1).is_wildcard
    assert Listener("::", 1, socket.AF_INET6, 1).is_wildcard
    assert Listener("127.0.0.53", 1, socket.AF_INET, 1).is_loopback
    assert not Listener("192.0.2.1", 1, socket.AF_INET, 1).is_loopback
    assert Listener("::1", 9100, socket.AF_INET6, 1).endpoint == "[::1]:9100"


def test_falls_back_to_proc_when_netlink_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ListenerReader) -> Listing:
        raise PermissionError(13, "sock_diag denied")

    calls: List[str] = []

    def from_proc(proc_root: str = "/proc") -> List[Listener]:
        calls.append(proc_root)
        return [Listener("0.0.0.0", 9100, socket.AF_INET, 1)]

    monkeypatch.setattr(mod.ListenerReader, "netlink", broken)
    monkeypatch.setattr(mod, "listening_sockets_proc", from_proc)
    assert listening_sockets() == [Listener("0.0.0.0", 9100, socket.AF_INET, 1)]
    assert calls == ["/proc"]

    # Said once per reader, however often it reads: the daemon's reader reads every second.
    with capture_logs() as logs:
        reader, other = ListenerReader(), ListenerReader()
        for _ in range(3):
            assert reader().keys == {(9100, 1)}
        assert other().listeners == (Listener("0.0.0.0", 9100, socket.AF_INET, 1),)
    said = [e for e in logs if e["event"] == "listener_netlink_unavailable"]
    assert [e["fallback"] for e in said] == ["/proc/net/tcp", "/proc/net/tcp"]


def test_a_reading_sees_each_socket_of_a_group_and_one_listener() -> None:
    """What discovery identifies and what the watch compares come from one dump: a
    SO_REUSEPORT group is one listener, but each of its sockets is a key."""
    reader = ListenerReader()
    try:
        group = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
            sock.listen(1)
            group.append(sock)
        port = group[0].getsockname()[1]
        try:
            reading = reader()
            assert len([key for key in reading.keys if key[0] == port]) == 2
            (listener,) = [item for item in reading.listeners if item.port == port]
            assert listener.address == "127.0.0.1" and listener.uid == os.getuid()
            assert listener.inode == min(inode for p, inode in reading.keys if p == port)
        finally:
            for sock in group:
                sock.close()
        assert port not in {p for p, _inode in reader().keys}
    finally:
        reader.close()


UNCHANGED_PROGRAM = """
import json, socket
from regagent.discovery.listeners import ListenerReader
reader = ListenerReader()
first = reader()
again = reader()
with socket.create_server(("127.0.0.1", 9100)):
    second = reader()
    third = reader()
print(json.dumps({
    "unchanged_is_previous": again is first,
    "change_is_new": second is not first,
    "seen": sorted(p for p, _inode in second.keys),
    "then_unchanged": third is second,
}))
"""


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare(1) and root"
)
def test_an_unchanged_reading_is_the_previous_one_and_a_change_is_seen() -> None:
    """The watch reads every second: an unchanged host costs no parsing. In a network
    namespace of its own, where nothing else opens or closes a listener."""
    script = 'ip link set lo up\nexec "$@"\n'
    shown = subprocess.run(
        ["unshare", "--net", "sh", "-ec", script, "netns", sys.executable, "-c", UNCHANGED_PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "unchanged_is_previous": True,
        "change_is_new": True,
        "seen": [9100],
        "then_unchanged": True,
    }


def test_netlink_listing_is_live() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port in {x.port for x in mod.listening_sockets_netlink()}
    assert port not in {x.port for x in mod.listening_sockets_netlink()}
