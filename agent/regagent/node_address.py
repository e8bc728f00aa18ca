"""Finds the node address: the local address this host uses to reach a Consul server."""

from __future__ import annotations

import socket

from regagent.consul.pool import split_hostport


def route_source_address(server: str) -> str:
    """Local address of the route towards `server` (host:port); a UDP connect sends nothing."""
    host, port = split_hostport(server)
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        address: str = probe.getsockname()[0]
    return address.split("%", 1)[0]
