"""The TCP sockets in LISTEN state on this host, at a cost that grows with listeners only.

A busy host holds tens of thousands of established connections; walking them (as
`psutil.net_connections()` does, plus every process's file descriptors) costs hundreds of
milliseconds per cycle. The kernel's sock_diag netlink interface can be asked for LISTEN sockets
only (what `ss -tln` does): it then never touches the established-connection hash table.
Reading `/proc/net/tcp{,6}` is the fallback when netlink is unavailable (some sandboxes); it
lists every socket, so it is O(connections), but it needs no privilege either.

Layouts follow linux/include/uapi/linux/inet_diag.h; the netlink framing is `regagent.netlink`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import structlog

from regagent.netlink import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    dump_request,
    error_of,
    message_spans,
)

log = structlog.get_logger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older inet_diag request, answered for both address families
TCP_LISTEN = 10

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
    """All listening TCP sockets (IPv4 and IPv6), deduplicated: netlink first, /proc fallback.
    One reading with a reader of its own; what reads every second keeps a `ListenerReader`."""
    reader = ListenerReader()
    try:
        return list(reader().listeners)
    finally:
        reader.close()


def listening_sockets_netlink() -> List[Listener]:
    """LISTEN sockets by netlink only; raises OSError where the kernel will not tell."""
    reader = ListenerReader()
    try:
        return list(reader.netlink().listeners)
    finally:
        reader.close()


def dedupe(listeners: Iterable[Listener]) -> List[Listener]:
    """One entry per (family, address, port); SO_REUSEPORT groups keep their lowest inode."""
    best: Dict[Tuple[int, str, int], Listener] = {}
    for item in listeners:
        key = (item.family, item.address, item.port)
        seen = best.get(key)
        if seen is None or (item.inode and (not seen.inode or item.inode < seen.inode)):
            best[key] = item
    return sorted(best.values(), key=lambda x: (x.port, x.family, x.address))


ListenerKeys = FrozenSet[Tuple[int, int]]  # (port, inode) of every LISTEN socket


class Listing:
    """One reading of the LISTEN sockets: the (port, inode) of every socket, which is what
    tells one reading from the next, and the listeners deduplicated, which is what discovery
    identifies (a SO_REUSEPORT group is one listener, but each of its sockets is a key).
    The listeners are decoded when first asked for: a look that only compares keys decodes
    no address."""

    def __init__(self, keys: ListenerKeys, decode: Callable[[], Iterable[Listener]]) -> None:
        self.keys = keys
        self._decode = decode
        self._listeners: Optional[Tuple[Listener, ...]] = None

    @property
    def listeners(self) -> Tuple[Listener, ...]:
        if self._listeners is None:
            self._listeners = tuple(dedupe(self._decode()))
        return self._listeners

    @classmethod
    def of(cls, listeners: Iterable[Listener]) -> Listing:
        found = list(listeners)
        return cls(frozenset((item.port, item.inode) for item in found), lambda: found)


# --- netlink -------------------------------------------------------------------------------

_DIAG_ANSWERS = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)
DUMP_TRIES = 3  # a dump interrupted by sockets coming and going is redone, at most this often


def build_request(family: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets in LISTEN state only."""
    body = (
        _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        + _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16)
        + _SOCKID_TAIL.pack(0, 0, 0)
    )
    return dump_request(SOCK_DIAG_BY_FAMILY, body, seq)


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
    return dump_request(TCPDIAG_GETSOCK, body, seq)


def parse_diag_msg(payload: bytes, offset: int = 0) -> Optional[Listener]:
    """A Listener from the inet_diag_msg at `offset`, or None for a non-LISTEN or malformed
    record."""
    if len(payload) - offset < _MSG_LEN:
        return None
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(payload, offset)
    if state != TCP_LISTEN or family not in FAMILY_NAMES:
        return None
    sport, _dport, src, _dst = _SOCKID.unpack_from(payload, offset + _MSG_HEAD.size)
    tail = offset + _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(payload, tail)
    raw = src[:4] if family == socket.AF_INET else src
    return Listener(socket.inet_ntop(family, raw), sport, family, inode, uid)


_SPORT_OFFSET = _MSG_HEAD.size  # idiag_sport, first field of the sockid
_INODE_OFFSET = _MSG_LEN - 4  # idiag_inode, last field of inet_diag_msg
_PORT = struct.Struct("!H")
_INODE = struct.Struct("=I")


@dataclass(frozen=True)
class _Datagram:
    """One datagram of a dump answer and what it said: the (port, inode) of its LISTEN
    sockets, read at fixed offsets, and where their records start, for `listeners`."""

    data: bytes
    keys: Tuple[Tuple[int, int], ...]
    records: Tuple[int, ...]
    done: bool
    interrupted: bool

    def listeners(self) -> Iterator[Listener]:
        for offset in self.records:
            item = parse_diag_msg(self.data, offset)
            if item is not None:
                yield item


def _parse(data: bytes, seq: int) -> _Datagram:
    """What one datagram of the answer to dump `seq` says, without decoding addresses."""
    keys: List[Tuple[int, int]] = []
    records: List[int] = []
    interrupted = False
    for msg_type, flags, msg_seq, body, size in message_spans(data):
        if msg_seq != seq:
            continue  # a late answer to an earlier, abandoned dump
        interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
        if msg_type == NLMSG_DONE:
            return _Datagram(data, tuple(keys), tuple(records), True, interrupted)
        if msg_type == NLMSG_ERROR:
            error = error_of(data, body, "sock_diag")
            if error is not None:
                raise error
        elif msg_type in _DIAG_ANSWERS and size >= _MSG_LEN and data[body + 1] == TCP_LISTEN:
            (port,) = _PORT.unpack_from(data, body + _SPORT_OFFSET)
            (inode,) = _INODE.unpack_from(data, body + _INODE_OFFSET)
            keys.append((port, inode))
            records.append(body)
    return _Datagram(data, tuple(keys), tuple(records), False, interrupted)


class ListenerReader:
    """Reads the LISTEN sockets for as long as it lives: what discovery identifies each cycle
    and what the watch compares once a second, from one loop over one dump.

    One netlink socket is kept open and asked for one dump for both families where the kernel
    allows it. A datagram byte-identical to the one at the same place in the previous answer
    (same seq, same sockets) is not parsed again, and an answer that is identical throughout
    gives back the previous `Listing`: the usual reading parses and builds nothing. When
    netlink fails, the reading comes from /proc (said once per reader) and the socket is
    reopened at the next reading."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._sock: Optional[socket.socket] = None
        self._compat = True  # one dump for both families while the kernel takes it
        # The same seq every reading (the socket is closed after any error, so no late answer
        # of an abandoned dump can arrive), so that an unchanged answer is byte-identical.
        self._seq = 1
        self._parsed: Dict[int, List[_Datagram]] = {}
        self._last: Optional[Listing] = None
        self._fallback_said = False

    def __call__(self) -> Listing:
        """The sockets now; ListenerDiscoveryError when neither netlink nor /proc tells."""
        try:
            return self.netlink()
        except OSError as exc:
            self.close()
            if not self._fallback_said:
                self._fallback_said = True
                log.warning(
                    "listener_netlink_unavailable", error=str(exc), fallback="/proc/net/tcp"
                )
        try:
            return Listing.of(listening_sockets_proc(self.proc_root))
        except OSError as exc:
            raise ListenerDiscoveryError(f"cannot list listening sockets: {exc}") from exc

    def netlink(self) -> Listing:
        """The sockets by netlink; raises OSError where the kernel will not tell."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            self._sock.settimeout(5.0)
        if self._compat:
            try:
                return self._listing([(build_compat_request(self._seq), self._seq)])
            except OSError:
                self._compat = False  # this kernel refuses it: one dump per family from now on
        families = enumerate((socket.AF_INET, socket.AF_INET6), start=self._seq)
        return self._listing([(build_request(family, seq), seq) for seq, family in families])

    def _listing(self, dumps: List[Tuple[bytes, int]]) -> Listing:
        chunks: List[_Datagram] = []
        unchanged = True
        for request, seq in dumps:
            answer, same = self._dump(request, seq)
            chunks += answer
            unchanged = unchanged and same
        if unchanged and self._last is not None:
            return self._last
        keys = frozenset(key for chunk in chunks for key in chunk.keys)
        self._last = Listing(keys, lambda: [item for c in chunks for item in c.listeners()])
        return self._last

    def _dump(self, request: bytes, seq: int) -> Tuple[List[_Datagram], bool]:
        """The answer to one dump request, and whether it is the previous answer again."""
        assert self._sock is not None
        previous = self._parsed.get(seq, [])
        answer: List[_Datagram] = []
        for _attempt in range(DUMP_TRIES):
            self._sock.sendto(request, (0, 0))
            answer = self._read(seq)
            if not any(chunk.interrupted for chunk in answer):
                break
        same = len(answer) == len(previous) and all(a is b for a, b in zip(answer, previous))
        return answer, same

    def _read(self, seq: int) -> List[_Datagram]:
        assert self._sock is not None
        before = self._parsed.get(seq, [])
        answer: List[_Datagram] = []
        for index in range(_MAX_DUMP_MESSAGES):
            data = self._sock.recv(_RECV_BUFFER)
            if not data:
                raise OSError("netlink socket closed during dump")
            known = before[index] if index < len(before) else None
            chunk = known if known is not None and known.data == data else _parse(data, seq)
            answer.append(chunk)
            if chunk.done:
                self._parsed[seq] = answer
                return answer
        raise OSError("netlink dump did not terminate")

    def close(self) -> None:
        self._parsed.clear()
        self._last = None
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
