"""Listener discovery: the netlink request layout, message parsing, /proc parsing, dedupe."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path
from typing import List

import pytest

from regagent.discovery import listeners as mod
from regagent.discovery.listeners import (
    Listener,
    build_request,
    dedupe,
    iter_messages,
    listening_sockets,
    listening_sockets_proc,
    parse_diag_msg,
    parse_proc_net_tcp,
)

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
    def broken() -> List[Listener]:
        raise PermissionError(13, "sock_diag denied")

    calls: List[str] = []

    def from_proc(proc_root: str = "/proc") -> List[Listener]:
        calls.append(proc_root)
        return [Listener("0.0.0.0", 9100, socket.AF_INET, 1)]

    monkeypatch.setattr(mod, "listening_sockets_netlink", broken)
    monkeypatch.setattr(mod, "listening_sockets_proc", from_proc)
    assert listening_sockets() == [Listener("0.0.0.0", 9100, socket.AF_INET, 1)]
    assert calls == ["/proc"]


def test_netlink_listing_is_live() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port in {x.port for x in mod.listening_sockets_netlink()}
    assert port not in {x.port for x in mod.listening_sockets_netlink()}
