"""The TCP sockets in LISTEN state on this host, at a cost that grows with listeners only.

A busy host holds tens of thousands of established connections; walking them (as
`psutil.net_connections()` does, plus every process's file descriptors) costs hundreds of
milliseconds per cycle. The kernel's sock_diag netlink interface can be asked for LISTEN sockets
only (what `ss -tln` does): it then never touches the established-connection hash table.
Reading `/proc/net/tcp{,6}` is the fallback when netlink is unavailable (some sandboxes); it
lists every socket, so it is O(connections), but it needs no privilege either.

Layouts follow linux/include/uapi/linux/inet_diag.h and linux/netlink.h.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

import structlog

log = structlog.get_logger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older inet_diag request, answered for both address families
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10

# struct nlmsghdr: len, type, flags, seq, pid (host byte order).
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then struct inet_diag_sockid
# (sport, dport and addresses in network byte order; interface and cookie in host order).
_REQ_HEAD = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")  # idiag_if, idiag_cookie[2]
# struct inet_diag_msg: family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_MSG_LEN = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + _MSG_TAIL.size  # 72 bytes

_RECV_BUFFER = 256 * 1024
_MAX_DUMP_MESSAGES = 1_000_000  # a bound on the receive loop, far above any real host
_PROC_LISTEN_STATE = "0A"

FAMILY_NAMES: Dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


@dataclass(frozen=True, order=True)
class Listener:
    """One listening TCP socket: where it listens and the inode that names its owner."""

    address: str
    port: int
    family: int
    inode: int
    uid: int = -1

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, str(self.family))

    @property
    def is_wildcard(self) -> bool:
        return self.address in ("0.0.0.0", "::")

    @property
    def is_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback

    @property
    def endpoint(self) -> str:
        """`address:port` as a person writes it (IPv6 in brackets)."""
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


class ListenerDiscoveryError(OSError):
    """Neither netlink nor /proc could list the listening sockets."""


def listening_sockets() -> List[Listener]:
    """All listening TCP sockets (IPv4 and IPv6), deduplicated: netlink first, /proc fallback."""
    try:
        return listening_sockets_netlink()
    except OSError as exc:
        _warn_fallback_once(exc)
    try:
        return listening_sockets_proc()
    except OSError as exc:
        raise ListenerDiscoveryError(f"cannot list listening sockets: {exc}") from exc


_fallback_warned = False


def _warn_fallback_once(exc: OSError) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        log.warning("listener_netlink_unavailable", error=str(exc), fallback="/proc/net/tcp")


def dedupe(listeners: Iterable[Listener]) -> List[Listener]:
    """One entry per (family, address, port); SO_REUSEPORT groups keep their lowest inode."""
    best: Dict[Tuple[int, str, int], Listener] = {}
    for item in listeners:
        key = (item.family, item.address, item.port)
        seen = best.get(key)
        if seen is None or (item.inode and (not seen.inode or item.inode < seen.inode)):
            best[key] = item
    return sorted(best.values(), key=lambda x: (x.port, x.family, x.address))


# --- netlink -------------------------------------------------------------------------------


def listening_sockets_netlink() -> List[Listener]:
    """LISTEN sockets from one sock_diag dump per address family; raises OSError if unsupported."""
    found: List[Listener] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            found.extend(_dump_family(sock, family, seq))
    return dedupe(found)


def build_request(family: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets in LISTEN state only."""
    body = (
        _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        + _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
        + _SOCKID_TAIL.pack(0, 0, 0)
    )
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def _dump_family(sock: socket.socket, family: int, seq: int) -> List[Listener]:
    for _attempt in range(3):  # a dump interrupted by concurrent changes is simply redone
        sock.sendto(build_request(family, seq), (0, 0))
        listeners, interrupted = _read_dump(sock, seq)
        if not interrupted:
            return listeners
    return listeners


def _read_dump(sock: socket.socket, seq: int) -> Tuple[List[Listener], bool]:
    listeners: List[Listener] = []
    interrupted = False
    for _ in range(_MAX_DUMP_MESSAGES):
        data = sock.recv(_RECV_BUFFER)
        if not data:
            raise OSError("netlink socket closed during dump")
        for msg_type, flags, msg_seq, payload in iter_messages(data):
            if msg_seq != seq:
                continue
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if msg_type == NLMSG_DONE:
                return listeners, interrupted
            if msg_type == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", payload)
                if errno == 0:
                    continue
                raise OSError(-errno, f"sock_diag: {os.strerror(-errno)}")
            if msg_type == SOCK_DIAG_BY_FAMILY:
                item = parse_diag_msg(payload)
                if item is not None:
                    listeners.append(item)
    raise OSError("netlink dump did not terminate")


def iter_messages(data: bytes) -> Iterator[Tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) for each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise OSError("truncated netlink message")
        yield msg_type, flags, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def parse_diag_msg(payload: bytes) -> Optional[Listener]:
    """A Listener from one inet_diag_msg, or None for a non-LISTEN or malformed record."""
    if len(payload) < _MSG_LEN:
        return None
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(payload, 0)
    if state != TCP_LISTEN or family not in FAMILY_NAMES:
        return None
    sport, _dport, src, _dst = _SOCKID.unpack_from(payload, _MSG_HEAD.size)
    tail = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(payload, tail)
    raw = src[:4] if family == socket.AF_INET else src
    return Listener(socket.inet_ntop(family, raw), sport, family, inode, uid)


# --- the watch's look -----------------------------------------------------------------------

ListenerKeys = FrozenSet[Tuple[int, int]]  # (port, inode) of every LISTEN socket

_SPORT_OFFSET = _MSG_HEAD.size  # idiag_sport, first field of the sockid
_INODE_OFFSET = _MSG_LEN - 4  # idiag_inode, last field of inet_diag_msg
_PORT = struct.Struct("!H")
_DIAG_ANSWERS = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)
_INODE = struct.Struct("=I")


@dataclass(frozen=True)
class _Datagram:
    """One datagram of a dump answer and what it said."""

    data: bytes
    keys: Tuple[Tuple[int, int], ...]
    done: bool
    interrupted: bool


def _parse(data: bytes, seq: int) -> _Datagram:
    """(port, inode) of the LISTEN sockets in one datagram; iter_messages without copies."""
    keys: List[Tuple[int, int]] = []
    interrupted = False
    header, head = _NLMSGHDR.unpack_from, _NLMSGHDR.size
    offset, end = 0, len(data)
    while offset + head <= end:
        length, msg_type, flags, msg_seq, _pid = header(data, offset)
        if length < head or offset + length > end:
            raise OSError("truncated netlink message")
        body = offset + head
        offset += (length + 3) & ~3  # NLMSG_ALIGN
        if msg_seq != seq:
            continue  # a late answer to an earlier, abandoned dump
        interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
        if msg_type == NLMSG_DONE:
            return _Datagram(data, tuple(keys), True, interrupted)
        if msg_type == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, body)
            if errno:
                raise OSError(-errno, f"sock_diag: {os.strerror(-errno)}")
        elif (
            msg_type in _DIAG_ANSWERS and length - head >= _MSG_LEN and data[body + 1] == TCP_LISTEN
        ):
            (port,) = _PORT.unpack_from(data, body + _SPORT_OFFSET)
            (inode,) = _INODE.unpack_from(data, body + _INODE_OFFSET)
            keys.append((port, inode))
    return _Datagram(data, tuple(keys), False, interrupted)


def build_compat_request(seq: int) -> bytes:
    """An old-style TCPDIAG_GETSOCK dump of LISTEN sockets (struct inet_diag_req): the kernel
    answers it for IPv4 and IPv6 at once (it dumps with family AF_UNSPEC), so one walk of the
    listening hash instead of two."""
    body = (
        struct.pack("=BBBB", 0, 0, 0, 0)  # idiag_family, src_len, dst_len, ext
        + _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
        + _SOCKID_TAIL.pack(0, 0, 0)
        + struct.pack("=II", 1 << TCP_LISTEN, 0)  # idiag_states, idiag_dbs
    )
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


class ListenerKeysReader:
    """(port, inode) of every LISTEN socket, for the watch's look once a second: one netlink
    socket kept open, one dump for both families where the kernel allows it, and two
    fixed-offset fields read per socket (no addresses decoded, no objects built). Falls back to
    `listening_sockets` (and so to /proc) when netlink fails, reopening the socket next look.
    Unlike `listening_sockets` it keeps every socket of a SO_REUSEPORT group: the watch only
    compares one look with the next."""

    def __init__(self) -> None:
        self._sock: Optional[socket.socket] = None
        self._compat = True  # one dump for both families while the kernel takes it
        # The same seq every look (the socket is closed after any error, so no late answer of
        # an abandoned dump can arrive), so that an unchanged answer is byte-identical.
        self._seq = 1
        self._parsed: Dict[int, List[_Datagram]] = {}

    def __call__(self) -> ListenerKeys:
        try:
            return self._netlink()
        except OSError as exc:
            self.close()
            _warn_fallback_once(exc)
            return frozenset((item.port, item.inode) for item in listening_sockets())

    def _netlink(self) -> ListenerKeys:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            self._sock.settimeout(5.0)
        if self._compat:
            try:
                return frozenset(self._dump(build_compat_request(self._seq), self._seq))
            except OSError:
                self._compat = False  # this kernel refuses it: one dump per family from now on
        keys: Set[Tuple[int, int]] = set()
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=self._seq):
            keys.update(self._dump(build_request(family, seq), seq))
        return frozenset(keys)

    def _dump(self, request: bytes, seq: int) -> List[Tuple[int, int]]:
        assert self._sock is not None
        for _attempt in range(3):  # an interrupted dump is redone, like _dump_family
            self._sock.sendto(request, (0, 0))
            found, interrupted = self._read(seq)
            if not interrupted:
                break
        return found

    def _read(self, seq: int) -> Tuple[List[Tuple[int, int]], bool]:
        assert self._sock is not None
        found: List[Tuple[int, int]] = []
        interrupted = False
        # A datagram byte-identical to the one at the same place in the previous look's
        # answer (same seq, same sockets) is not parsed again: the usual look parses nothing.
        seen = self._parsed.get(seq, [])
        parsed: List[_Datagram] = []
        for index in range(_MAX_DUMP_MESSAGES):
            data = self._sock.recv(_RECV_BUFFER)
            if not data:
                raise OSError("netlink socket closed during dump")
            known = seen[index] if index < len(seen) else None
            chunk = known if known is not None and known.data == data else _parse(data, seq)
            parsed.append(chunk)
            found.extend(chunk.keys)
            interrupted = interrupted or chunk.interrupted
            if chunk.done:
                self._parsed[seq] = parsed
                return found, interrupted
        raise OSError("netlink dump did not terminate")

    def close(self) -> None:
        self._parsed.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- /proc fallback ------------------------------------------------------------------------


def listening_sockets_proc(proc_root: str = "/proc") -> List[Listener]:
    """LISTEN sockets from /proc/net/tcp and tcp6 (either may be absent, not both)."""
    found: List[Listener] = []
    readable = 0
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(os.path.join(proc_root, "net", name), encoding="ascii") as table:
                readable += 1
                found.extend(parse_proc_net_tcp(table, family))
        except FileNotFoundError:
            continue
    if not readable:
        raise FileNotFoundError(f"{proc_root}/net/tcp and tcp6 are both missing")
    return dedupe(found)


def parse_proc_net_tcp(lines: Iterable[str], family: int) -> Iterator[Listener]:
    """LISTEN rows of a /proc/net/tcp{,6} table; other rows and the header are skipped."""
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _PROC_LISTEN_STATE or ":" not in fields[1]:
            continue
        hex_address, hex_port = fields[1].split(":")
        try:
            address = _proc_address(hex_address, family)
            yield Listener(address, int(hex_port, 16), family, int(fields[9]), int(fields[7]))
        except (ValueError, OSError):
            continue


def _proc_address(hex_address: str, family: int) -> str:
    # The kernel prints each 32-bit word of the (network-order) address as a host-order integer.
    words = [hex_address[i : i + 8] for i in range(0, len(hex_address), 8)]
    raw = b"".join(struct.pack("=I", int(word, 16)) for word in words)
    return socket.inet_ntop(family, raw)
