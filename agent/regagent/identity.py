"""Who this host is in Consul: its node name, node address and host identity (decision 10).

- The name is `node.name`, else the host name.
- The address is `node.address`, else (`auto`) the local end of the route towards the Consul
  server that answered, found by a UDP connect that sends nothing. A route over the loopback
  interface (a server on this very host) would register every service at 127.0.0.1, which no
  Prometheus elsewhere can scrape: `auto` then takes this host's own address of that family.
- The host identity is derived from `/etc/machine-id` (a hash, never the raw id, which systemd
  asks not to expose) and recorded in NodeMeta, so two hosts cloned with the same name (or both
  called `localhost`) are told apart instead of overwriting each other's services.
- The name used last is kept in the state directory, so a renamed host can retire its old node.

The host name, route lookup, interface list and machine-id path are handed in, so the engine
does no hidden I/O and a test can give each simulated host its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import stat
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import psutil  # type: ignore[import-untyped]  # no stubs for 5.9.x
import structlog

from regagent.config.model import NodeConfig
from regagent.errors import NoLocalRoute
from regagent.rules import split_hostport

log = structlog.get_logger(__name__)

Route = Callable[[str], str]  # server host:port -> local source address
Interfaces = Callable[[], List[Tuple[int, str]]]  # (family, address) of this host's interfaces

HOST_ID_KEY = "regagent-host-id"  # NodeMeta key
MACHINE_ID = "/etc/machine-id"
NODE_FILE = "node.json"  # in the state directory: the node name used last
_MAX_NODE_FILE = 4096


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


def interface_addresses() -> List[Tuple[int, str]]:
    """(family, address) of every IPv4/IPv6 address configured on this host."""
    found: List[Tuple[int, str]] = []
    for addresses in psutil.net_if_addrs().values():
        for item in addresses:
            if item.family in (socket.AF_INET, socket.AF_INET6):
                found.append((int(item.family), str(item.address).split("%", 1)[0]))
    return found


def host_id(path: str = MACHINE_ID) -> Optional[str]:
    """A stable identity for this host derived from its machine id, or None if there is none.

    Hashed with a regagent-specific prefix, as systemd recommends for ids shown to others."""
    try:
        with open(path, "rb") as handle:
            machine = handle.read(256).strip()
    except OSError:
        return None
    if not machine:
        return None
    return hashlib.sha256(b"regagent host id\n" + machine).hexdigest()[:32]


def _usable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


class NodeIdentity:
    """This host's node name, host identity, and address as resolved once for the process."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        state_dir: Optional[str] = None,
        hostname: Callable[[], str] = socket.gethostname,
        route: Route = route_source_address,
        interfaces: Interfaces = interface_addresses,
        machine_id: str = MACHINE_ID,
    ) -> None:
        self.config = config
        self.name = config.name or hostname()
        self.host_id = host_id(machine_id)
        self.route = route
        self.interfaces = interfaces
        self.state_dir = state_dir
        self._auto_address: Optional[str] = None

    @property
    def auto(self) -> bool:
        return self.config.address == "auto"

    def address(self, server: str, *, keep: bool = True) -> str:
        """`node.address`, or for `auto` the local address routing to `server`, never loopback.

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
        if not _usable(address):
            address = self._own_address(ipaddress.ip_address(address).version, server)
        if keep:
            self._auto_address = address
        return address

    def _own_address(self, version: int, server: str) -> str:
        """The route to `server` stays on this host: take this host's own address instead,
        of the same family if it has one."""
        usable = [a for _, a in self.interfaces() if _usable(a)]
        same = [a for a in usable if ipaddress.ip_address(a).version == version]
        candidates = same or usable
        if not candidates:
            raise NoLocalRoute(
                f"node.address is auto, but the route to {server} is the loopback interface and "
                "this host has no other address Prometheus could scrape; set node.address"
            )
        log.info("node_address_not_loopback", server=server, address=candidates[0])
        return candidates[0]

    def adopt(self, previous: NodeIdentity) -> None:
        """A reload that keeps `auto` keeps the address found (no rewrite of every service)."""
        if self.auto and previous.auto and previous.name == self.name:
            self._auto_address = previous._auto_address

    # The node name used last, so that a renamed host can retire its old node.

    def _node_file(self) -> Optional[str]:
        return os.path.join(self.state_dir, NODE_FILE) if self.state_dir else None

    def previous_name(self) -> Optional[str]:
        """The node name recorded by the last successful sync, if any and readable."""
        path = self._node_file()
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    return None  # a FIFO or device planted there must not hang or flood us
                raw = handle.read(_MAX_NODE_FILE + 1)
        except OSError:
            return None
        try:
            doc = json.loads(raw) if len(raw) <= _MAX_NODE_FILE else None
        except ValueError:
            return None
        name = doc.get("node") if isinstance(doc, dict) else None
        return name if isinstance(name, str) and 0 < len(name) <= 255 else None

    def record_name(self) -> None:
        """Remembers this node name (atomically; an unwritable state dir is only logged)."""
        path = self._node_file()
        if path is None or self.previous_name() == self.name:
            return
        body: Dict[str, str] = {"node": self.name}
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".node-", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(body, handle)
                handle.write("\n")
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(temporary)
            log.warning("node_name_not_recorded", path=path, error=exc.strerror or str(exc))
