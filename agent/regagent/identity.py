"""Who this host is in Consul: its node name, node address and host identity (decision 10).

- The name is `node.name`, else the host name.
- The address is `node.address`, else (`auto`) the local end of the route towards the Consul
  server that answered, found by a UDP connect that sends nothing. A route over the loopback
  interface (a server on this very host) would register every service at 127.0.0.1, which no
  Prometheus elsewhere can scrape: `auto` then takes this host's own address of that family.
- The host identity is derived from `/etc/machine-id` (a hash, never the raw id, which systemd
  asks not to expose) and recorded in NodeMeta, so two hosts cloned with the same name (or both
  called `localhost`) are told apart instead of overwriting each other's services.
- The name each configuration used last is kept in the state directory (`NodeNames`), so a
  renamed host can retire its old node, and a second configuration is not taken for a rename.

The host name, route lookup, interface list and machine-id path are handed in, so the engine
does no hidden I/O and a test can give each simulated host its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import structlog

from regagent.config.model import NodeConfig
from regagent.errors import ConfigError, NoLocalRoute, StateDirectoryInUse
from regagent.netlink import host_addresses
from regagent.rules import node_name_problem, printable_text, split_hostport, utc_text
from regagent.statedir import Corrupt, Lock, StateDir, StateFile, Untrusted, Warnings

log = structlog.get_logger(__name__)

Route = Callable[[str], str]  # server host:port -> local source address
Interfaces = Callable[[], List[Tuple[int, str]]]  # (family, address) of this host's interfaces

HOST_ID_KEY = "regagent-host-id"  # NodeMeta key
MACHINE_ID = "/etc/machine-id"
NODE_FILE = "node.json"  # in the state directory: the node name each configuration used last
NODE_FILE_VERSION = 2
MAX_NODE_RECORDS = 32  # configurations remembered; the least recently recorded go first
MAX_NODE_FILE = 64 * 1024  # far above 32 records; a larger file was not written by regagent
DAEMON_LOCK = "run.lock"  # in the state directory: held by `regagent run` while it runs


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


@dataclass(frozen=True)
class Writer:
    """Who runs: which configuration (its path as given to `-c`, made absolute) and whether as
    the daemon. That, with the host identity, tells a rename from a second configuration."""

    config: str = ""
    daemon: bool = False

    @property
    def command(self) -> str:
        return "run" if self.daemon else "one-shot"

    @classmethod
    def of(cls, config_path: Optional[str], *, daemon: bool) -> Writer:
        return cls(os.path.abspath(config_path) if config_path else "", daemon)


class NodeIdentity:
    """This host's node name, host identity, and address as resolved once for the process."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        state_dir: Optional[str] = None,
        writer: Optional[Writer] = None,
        warnings: Optional[Warnings] = None,
        hostname: Callable[[], str] = socket.gethostname,
        route: Route = route_source_address,
        interfaces: Interfaces = host_addresses,
        machine_id: str = MACHINE_ID,
    ) -> None:
        self.config = config
        self.name = config.name or hostname()
        problem = node_name_problem(self.name)
        if problem is not None:  # node.name itself is checked with the configuration
            raise ConfigError([f"node.name: not set, and this host's name {problem}; set it"])
        self.host_id = host_id(machine_id)
        self.route = route
        self.interfaces = interfaces
        self.writer = writer or Writer()
        self.warnings = warnings or Warnings()  # node.json problems, said once (across reloads)
        self.names = (
            None
            if state_dir is None
            else NodeNames(StateDir(state_dir, self.warnings), self.writer, self.host_id)
        )
        self._auto_address: Optional[str] = None
        self._recorded = False  # node.json is known to hold this name: nothing to retire

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

    def previous_name(self) -> Optional[str]:
        """The node this configuration used before on this host and now no longer uses: the
        old node of a rename, to retire. None when there is none, or nothing says so reliably.
        No I/O once this name is recorded."""
        if self._recorded or self.names is None:
            return None
        return self.names.previous(self.name)

    def beside_daemon(self) -> bool:
        """Whether this is a one-shot command while `regagent run` holds the state directory:
        then it leaves the directory's files to the daemon."""
        return self.names is not None and self.names.beside_daemon()

    def record_name(self) -> None:
        """Remembers this node name for this configuration (once per process; an untrusted or
        unwritable state directory, or a one-shot beside the daemon, records nothing)."""
        if not self._recorded and self.names is not None:
            self._recorded = self.names.record(self.name)


@dataclass(frozen=True)
class NameRecord:
    """One line of `node.json`: the node a configuration used last, on which host, by which
    command, and when."""

    node: str
    host_id: str
    command: str
    recorded: str


def daemon_lock(state_dir: str, warnings: Warnings, kept: Optional[Lock] = None) -> Optional[Lock]:
    """The daemon's lock on its state directory, so that a one-shot command beside it leaves its
    node alone and a second daemon does not share the directory. `kept`, a reloaded daemon's,
    is kept if the directory stayed, else released once the new one is held. None (said once)
    where the directory cannot hold it; StateDirectoryInUse where another daemon holds it."""
    directory = StateDir(state_dir, warnings)
    if kept is not None and kept.directory.path == directory.path:
        return kept
    lock = Lock(directory, DAEMON_LOCK)
    try:
        taken = lock.acquire()
    except (OSError, Untrusted, Corrupt) as exc:
        warnings.once(
            "state_lock_unavailable",
            directory.file(DAEMON_LOCK),
            str(exc),
            consequence="one-shot commands cannot tell that the daemon runs",
        )
        return None
    if not taken:
        raise StateDirectoryInUse(
            f"sync.state_dir {directory.path} is in use by another `regagent run` (it holds "
            f"{lock.directory.file(DAEMON_LOCK)}); two daemons sharing it would take each "
            "other's node for a rename. Give each configuration its own sync.state_dir"
        )
    if kept is not None:
        kept.release()  # the reload moved the state directory
    return lock


class NodeNames:
    """`<state_dir>/node.json`: the node name each configuration used last on this host.

    A rename is when the same configuration on the same host comes back under another name (a
    new host name, or node.name edited). Anything else is not evidence of one: a second
    configuration sharing the state directory (a scratch `regagent -c other.yaml sync`) has a
    record of its own; a record made on another host (a copied state directory) is not this
    host's; and while `regagent run` holds the state directory's lock, a one-shot command
    neither retires nor records anything, nor does it ever act on what the daemon recorded:
    the daemon owns its node and retires its own old names. The file is read only if regagent
    could have written it (`regagent.statedir`): an untrusted one is ignored, with one
    warning, and can never order a deletion.
    """

    def __init__(
        self,
        directory: StateDir,
        writer: Writer,
        host: Optional[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.file = StateFile(directory, NODE_FILE, "node_state", MAX_NODE_FILE)
        self.lock = Lock(directory, DAEMON_LOCK)
        self.writer = writer
        self.host = host
        self.clock = clock
        self._deferred = False  # said once: a one-shot beside the daemon leaves renames to it

    def previous(self, name: str) -> Optional[str]:
        """This configuration's last node name on this host when it differs from `name`."""
        if self.host is None or self.beside_daemon():
            return None
        entry = self.load().get(self.writer.config)
        if entry is None or entry.node == name or entry.host_id != self.host:
            return None
        if entry.command == "run" and not self.writer.daemon:
            return None  # the daemon's own record: the daemon retires its old names
        return entry.node

    def record(self, name: str) -> bool:
        """Records `name` for this configuration; True when the file now says so."""
        if self.host is None or self.beside_daemon():
            return False
        records = self.load()
        mine = records.get(self.writer.config)
        if mine is not None and mine.command == "run" and not self.writer.daemon:
            return mine.node == name  # not overwritten by a one-shot (see previous)
        if mine is not None and (mine.node, mine.host_id, mine.command) == (
            name,
            self.host,
            self.writer.command,
        ):
            return True
        records[self.writer.config] = NameRecord(
            name, self.host, self.writer.command, utc_text(self.clock())
        )
        newest = sorted(records.items(), key=lambda item: item[1].recorded, reverse=True)
        return self.file.write(_encode_names(dict(newest[:MAX_NODE_RECORDS])))

    def load(self) -> Dict[str, NameRecord]:
        """The records in the file ({} when absent, untrusted or corrupt; said once)."""
        raw = self.file.read()
        if raw is None:
            return {}
        try:
            return _decode_names(raw)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self.file.corrupt(f"{type(exc).__name__}: {printable_text(str(exc), 200)}")
            return {}

    def beside_daemon(self) -> bool:
        """Whether this one-shot command runs while `regagent run` holds the lock (said once)."""
        if self.writer.daemon or not self.lock.held_elsewhere():
            return False
        if not self._deferred:
            self._deferred = True
            log.info(
                "node_rename_left_to_daemon",
                path=self.lock.directory.path,
                reason="regagent run holds this state directory: a one-shot command retires "
                "no node and writes none of its files",
            )
        return True


def _encode_names(records: Mapping[str, NameRecord]) -> str:
    doc = {
        "version": NODE_FILE_VERSION,
        "configs": {key: asdict(entry) for key, entry in sorted(records.items())},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _decode_names(raw: str) -> Dict[str, NameRecord]:
    """Strictly: a record that names no valid node, or too many records, is not regagent's."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != NODE_FILE_VERSION:
        raise ValueError(f"expected a version {NODE_FILE_VERSION} node name record")
    configs = doc["configs"]
    if not isinstance(configs, dict) or len(configs) > MAX_NODE_RECORDS:
        raise ValueError(f"configs must be a mapping of at most {MAX_NODE_RECORDS} records")
    records: Dict[str, NameRecord] = {}
    for key, item in configs.items():
        if not isinstance(item, dict):
            raise TypeError("a record must be a mapping")
        fields = {f: item[f] for f in ("node", "host_id", "command", "recorded")}
        if not all(isinstance(v, str) and printable_text(v) == v for v in (key, *fields.values())):
            raise TypeError("record fields must be printable text")
        if node_name_problem(fields["node"]) or fields["command"] not in ("run", "one-shot"):
            raise ValueError("a record names no valid node or command")
        records[key] = NameRecord(**fields)
    return records
