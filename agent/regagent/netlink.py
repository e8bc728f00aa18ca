"""Netlink framing (linux/include/uapi/linux/netlink.h), for the two kernel dumps regagent
reads: the LISTEN sockets (sock_diag, `regagent.discovery.listeners`) and this host's own
addresses (rtnetlink, `host_addresses` below). A dump is a request with NLM_F_DUMP; the answer
is datagrams of messages, each a header and a payload, up to one of type NLMSG_DONE.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Dict, Iterator, List, Optional, Tuple

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3

# struct nlmsghdr: len, type, flags, seq, pid (host byte order).
NLMSGHDR = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
# struct ifaddrmsg: family, prefixlen, flags, scope, index; then attributes (struct rtattr:
# length, type; the value padded to 4 bytes), linux/include/uapi/linux/if_addr.h.
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
IFA_ADDRESS = 1
IFA_LOCAL = 2
_ADDRESS_BYTES: Dict[int, int] = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}
_RECV_BUFFER = 64 * 1024
_MAX_DATAGRAMS = 10_000  # a bound on the receive loop, far above any host's address count


def dump_request(msg_type: int, body: bytes, seq: int) -> bytes:
    """A dump request of `msg_type` with `body` (the request's own struct)."""
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def message_spans(data: bytes) -> Iterator[Tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload offset, payload length) for each netlink message in one
    datagram: offsets rather than copies, since a datagram holds thousands of records."""
    offset, head, end = 0, NLMSGHDR.size, len(data)
    while offset + head <= end:
        length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < head or offset + length > end:
            raise OSError("truncated netlink message")
        yield msg_type, flags, seq, offset + head, length - head
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def iter_messages(data: bytes) -> Iterator[Tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) for each netlink message in one datagram."""
    for msg_type, flags, seq, body, size in message_spans(data):
        yield msg_type, flags, seq, data[body : body + size]


def error_of(data: bytes, body: int, what: str) -> Optional[OSError]:
    """The error an NLMSG_ERROR message at `body` carries (its errno is negative), or None
    for an acknowledgement (errno 0)."""
    (errno,) = _ERRNO.unpack_from(data, body)
    return OSError(-errno, f"{what}: {os.strerror(-errno)}") if errno else None


def host_addresses() -> List[Tuple[int, str]]:
    """(family, address) of every IPv4 and IPv6 address configured on this host, as
    `ip address` lists them (an RTM_GETADDR dump, what getifaddrs reads too). Raises OSError
    where the kernel will not tell."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.sendto(dump_request(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0), 1), (0, 0))
        found: List[Tuple[int, str]] = []
        for _ in range(_MAX_DATAGRAMS):
            data = sock.recv(_RECV_BUFFER)
            for msg_type, _flags, _seq, body, size in message_spans(data):
                if msg_type == NLMSG_DONE:
                    return found
                error = error_of(data, body, "rtnetlink") if msg_type == NLMSG_ERROR else None
                if error is not None:
                    raise error
                if msg_type == RTM_NEWADDR:
                    found += _address(data, body, size)
        raise OSError("netlink dump did not terminate")


def _address(data: bytes, body: int, size: int) -> List[Tuple[int, str]]:
    """The address of one RTM_NEWADDR message: IFA_LOCAL where there is one (the other end's
    on a point-to-point link is IFA_ADDRESS), else IFA_ADDRESS; none of another family."""
    family = data[body]
    width = _ADDRESS_BYTES.get(family)
    if width is None:
        return []
    attributes: Dict[int, bytes] = {}
    offset, end = body + _IFADDRMSG.size, body + size
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            break
        attributes[kind] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3  # RTA_ALIGN
    raw = attributes.get(IFA_LOCAL) or attributes.get(IFA_ADDRESS)
    if raw is None or len(raw) != width:
        return []
    return [(family, socket.inet_ntop(family, raw))]
