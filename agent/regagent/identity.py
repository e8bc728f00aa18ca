"""Who this host is in Consul: its node name and node address.

The name is `node.name`, else the host name. The address is `node.address`, else (`auto`) the
local end of the route towards the Consul server that answered, found by a UDP connect that
sends nothing. The route lookup and the host name are handed in, so the engine does no hidden
I/O and a test can give each simulated host its own.
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from regagent.config.model import NodeConfig
from regagent.errors import NoLocalRoute
from regagent.rules import split_hostport

Route = Callable[[str], str]  # server host:port -> local source address


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


class NodeIdentity:
    """This host's node name, and its address as resolved once for the life of the process."""

    def __init__(
        self,
        config: NodeConfig,
        hostname: Callable[[], str] = socket.gethostname,
        route: Route = route_source_address,
    ) -> None:
        self.config = config
        self.name = config.name or hostname()
        self.route = route
        self._auto_address: Optional[str] = None

    @property
    def auto(self) -> bool:
        return self.config.address == "auto"

    def address(self, server: str, *, keep: bool = True) -> str:
        """`node.address`, or for `auto` the local address routing to `server`.

        With `keep`, the first auto address found is kept for the process: on a multi-homed
        host a failover to a server behind another interface must not rewrite the node and
        every service address (and back again)."""
        if not self.auto:
            return self.config.address
        if self._auto_address is not None:
            return self._auto_address
        try:
            address = self.route(server)
        except OSError as exc:
            raise NoLocalRoute(
                f"cannot find a local address routing to {server} ({exc.strerror or exc}); "
                "set node.address in the configuration"
            ) from None
        if keep:
            self._auto_address = address
        return address

    def adopt(self, previous: NodeIdentity) -> None:
        """A reload that keeps `auto` keeps the address found (no rewrite of every service)."""
        if self.auto and previous.auto and previous.name == self.name:
            self._auto_address = previous._auto_address
