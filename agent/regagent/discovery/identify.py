"""From listening sockets to identified exporters.

A listener becomes a candidate by a hint (a known default port, a configured port range, a known
exporter's process) and is identified by the strongest evidence at hand (design decision 15,
`regagent.discovery.evidence`): what a short GET of its metrics path serves (a build_info, a
fingerprint), else a process only root could have started as that exporter, else the table's
default port. Listeners on the same port (`0.0.0.0` and `::`, say) are one finding, because they
become one service `<name>-<port>`.

Finding a socket's process costs a walk of every process's descriptors, O(connections) on a busy
host (design decision 7), so it is done only for listeners whose outcome can depend on the
process: see `needs_owner`, and a candidate whose answer named nothing (`identify`'s `owner`).
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Collection, Dict, FrozenSet, List, Optional, Protocol, Sequence, Tuple

import structlog

from regagent.config.model import Config, DiscoveryConfig
from regagent.discovery.evidence import (
    FROM_ANSWER,
    PROCESS,
    candidate_exporters,
    name_listener,
)
from regagent.discovery.exporters import DEFAULT_PATH, ExporterTable, load_exporter_table
from regagent.discovery.listeners import Listener, listening_sockets
from regagent.discovery.probe import ProbeResult, probe_metrics
from regagent.discovery.processes import ProcessInfo, ProcessResolver
from regagent.rules import exporter_text, printable_text

log = structlog.get_logger(__name__)

IDENTIFIED = "identified"
UNKNOWN_EXPORTER = "unknown-exporter"
NOT_EXPORTER = "not-exporter"
EXCLUDED = "excluded"
NOT_CANDIDATE = "not-candidate"
CANDIDATE = "candidate"  # transient: decided by the probe
PENDING = "pending"  # an unconfirmed candidate whose background probe has not answered yet

WILDCARD = "wildcard"
LOOPBACK = "loopback"
SPECIFIC = "specific"

GENERIC_SERVICE = "exporter"
UNKNOWN = "unknown"
MAX_CONCURRENT_PROBES = 8
MAX_PATHS_PER_LISTENER = 2
REASON_MAX = 200  # bytes of a probe's reason shown in `discover` and logs

Prober = Callable[[str, int, str, float, int], ProbeResult]
Identify = Callable[["Finding", Prober], "Finding"]  # identify() with settings and table bound
Owner = Callable[["Finding"], Optional[ProcessInfo]]  # the process of a finding's sockets


class Deferred(Protocol):
    """Where unconfirmed candidates are probed, outside the pass (`regagent.discovery.unconfirmed`):
    offered first, collected (identified, or PENDING) once the pass's own probes are done."""

    def offer(
        self,
        candidates: Sequence[Finding],
        identify: Identify,
        timeout: float,
        max_bytes: int,
        *,
        slow_timeout: Optional[float] = None,
    ) -> None: ...

    def collect(
        self, candidates: Sequence[Finding], timeout: float, max_bytes: int
    ) -> List[Finding]: ...


@dataclass(frozen=True)
class Finding:
    """One port with its listeners: whether it is an exporter, which one, and why (not)."""

    port: int
    listeners: Tuple[Listener, ...]
    process: Optional[ProcessInfo]
    address_kind: str  # wildcard, loopback or specific
    address: str  # the specific or loopback address; "" for a wildcard (the node address)
    probe_address: str
    outcome: str = NOT_CANDIDATE
    reason: str = ""
    candidate_reasons: Tuple[str, ...] = ()
    exporter: Optional[str] = None  # exporter name; "unknown" for an unidentified exporter
    version: Optional[str] = None
    metrics_path: str = DEFAULT_PATH
    scheme: str = "http"
    in_port_range: bool = False
    identified_by: Optional[str] = None  # which evidence named it (regagent.discovery.evidence)
    # Identified without a valid answer (by its process): why the answer failed (its check
    # says so). "" when it answered.
    problem: str = ""
    timed_out: bool = False  # its probe ran out of time (a slow exporter, or a silent socket)

    @property
    def is_exporter(self) -> bool:
        return self.outcome in (IDENTIFIED, UNKNOWN_EXPORTER)

    @property
    def endpoints(self) -> str:
        return ", ".join(listener.endpoint for listener in self.listeners)


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything one discovery pass saw; `complete` is false when listeners could not be read.
    `fresh`: the ports whose identification is new in this pass (probed now rather than
    answered from a cache, or identified in the background since the last pass)."""

    findings: Tuple[Finding, ...] = ()
    complete: bool = True
    error: str = ""
    fresh: FrozenSet[int] = frozenset()

    @property
    def exporters(self) -> Tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_exporter)


def discover(
    config: Config,
    *,
    table: Optional[ExporterTable] = None,
    resolver: Optional[ProcessResolver] = None,
    list_listeners: Callable[[], List[Listener]] = listening_sockets,
    prober: Prober = probe_metrics,
    known_ports: Collection[int] = (),
    deferred: Optional[Deferred] = None,
) -> DiscoveryResult:
    """Lists listeners, then `discover_among` them."""
    try:
        listeners = list_listeners()
    except OSError as exc:
        return unreadable(exc)
    return discover_among(
        listeners,
        config,
        table=table,
        resolver=resolver,
        prober=prober,
        known_ports=known_ports,
        deferred=deferred,
    )


def unreadable(exc: OSError) -> DiscoveryResult:
    """The result of a pass that could not list the listeners (said at error level)."""
    log.error("listener_discovery_failed", error=str(exc))
    return DiscoveryResult((), complete=False, error=str(exc))


def discover_among(
    listeners: Sequence[Listener],
    config: Config,
    *,
    table: Optional[ExporterTable] = None,
    resolver: Optional[ProcessResolver] = None,
    prober: Prober = probe_metrics,
    known_ports: Collection[int] = (),
    deferred: Optional[Deferred] = None,
) -> DiscoveryResult:
    """Picks candidates among `listeners`, probes them concurrently (bounded), identifies them.

    With `deferred`, only candidates on `known_ports` (the ports of services discovery keeps:
    their probe is their health check) are probed here; the others are unconfirmed and go to
    `deferred`, which probes them outside the pass (design decision 15)."""
    table = table or load_exporter_table()
    resolver = resolver or ProcessResolver()
    groups = group_by_port(listeners)
    wanted = [
        lst
        for port, group in groups.items()
        if needs_owner(port, group, config, table)
        for lst in group
    ]
    owners = resolver.resolve((lst.inode for lst in wanted), {lst.inode: lst.uid for lst in wanted})
    resolver.forget_except([lst.inode for lst in listeners])
    findings = [
        classify(port, group, _owner(group, owners), config, table)
        for port, group in sorted(groups.items())
    ]
    to_probe = [i for i, f in enumerate(findings) if f.outcome == CANDIDATE]
    later = [i for i in to_probe if deferred is not None and findings[i].port not in known_ports]
    to_probe = [i for i in to_probe if i not in later]
    settings = config.discovery
    owner = owner_of(resolver)
    # A listener nobody vouches for yet gets a first look as long as a health probe, then one
    # longer look (identify_timeout) if it was only slow; both in the background.
    timeout = min(settings.probe_timeout, settings.identify_timeout)
    slow = settings.identify_timeout if settings.identify_timeout > timeout else None
    max_bytes = settings.probe_max_bytes
    if deferred is not None and later:
        deferred.offer(
            [findings[i] for i in later],
            lambda finding, probe: identify(finding, settings, table, probe, owner=owner),
            timeout,
            max_bytes,
            slow_timeout=slow,
        )
    if to_probe:
        workers = min(MAX_CONCURRENT_PROBES, len(to_probe))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            probed = pool.map(
                lambda i: identify(findings[i], settings, table, prober, owner=owner), to_probe
            )
            for index, finding in zip(to_probe, probed):
                findings[index] = finding
    if deferred is not None and later:
        collected = deferred.collect([findings[i] for i in later], timeout, max_bytes)
        for index, finding in zip(later, collected):
            findings[index] = finding
    return DiscoveryResult(tuple(findings))


def owner_of(resolver: ProcessResolver) -> Owner:
    """A finding's process through `resolver` (one /proc walk, then cached per socket inode)."""

    def owner(finding: Finding) -> Optional[ProcessInfo]:
        if finding.process is not None:
            return finding.process
        inodes = {lst.inode: lst.uid for lst in finding.listeners}
        return _owner(finding.listeners, resolver.resolve(inodes, inodes))

    return owner


def group_by_port(listeners: Sequence[Listener]) -> Dict[int, Tuple[Listener, ...]]:
    groups: Dict[int, List[Listener]] = {}
    for listener in listeners:
        groups.setdefault(listener.port, []).append(listener)
    return {port: tuple(sorted(group)) for port, group in groups.items()}


def needs_owner(
    port: int, group: Tuple[Listener, ...], config: Config, table: ExporterTable
) -> bool:
    """Whether the owning process can change what becomes of this port's listeners.

    A process name can only add a candidate or exclude one. Loopback-only listeners are never
    registered and excluded ports never probed, whatever the process; a port that is already a
    candidate (a known default port, a configured range) needs the owner only to apply
    `exclude_processes`. Everything else needs the name to be recognised at all. (A candidate
    by port whose answer does not name it needs its owner too, but only then: `identify`
    looks it up through `owner_of`.)
    """
    settings = config.discovery
    if port in settings.exclude_ports or port == own_port(config):
        return False
    if address_rule(group)[0] == LOOPBACK:
        return False
    by_port = port in table.by_port or any(lo <= port <= hi for lo, hi in settings.port_ranges)
    return not by_port or bool(settings.exclude_processes)


def _owner(
    group: Tuple[Listener, ...], owners: Dict[int, Optional[ProcessInfo]]
) -> Optional[ProcessInfo]:
    """The one process that holds every listener of the port, else None. The port becomes one
    service at one address (`address_rule`): a process vouches only for sockets it holds, so
    root's exporter on one address must not vouch for a user's listener on another."""
    found = [owners.get(listener.inode) for listener in group]
    first = found[0] if found else None
    if first is None or any(p is None or p.pid != first.pid for p in found):
        return None
    return first


def address_rule(group: Tuple[Listener, ...]) -> Tuple[str, str, str]:
    """(kind, address to register, address to probe) for the listeners of one port.

    Wildcard: registered at the node address, probed on loopback of the same family.
    Loopback only: not reachable by Prometheus. Otherwise the first specific address.
    """
    wildcards = [lst for lst in group if lst.is_wildcard]
    if wildcards:
        ipv4 = any(lst.address == "0.0.0.0" for lst in wildcards)
        return WILDCARD, "", "127.0.0.1" if ipv4 else "::1"
    specific = [lst for lst in group if not lst.is_loopback]
    if specific:
        chosen = sorted(specific, key=lambda lst: (lst.family, lst.address))[0]
        return SPECIFIC, chosen.address, chosen.address
    return LOOPBACK, group[0].address, group[0].address


def own_port(config: Config) -> Optional[int]:
    """Port of regagent's own telemetry endpoint: regagent registers itself, not via discovery."""
    listen = config.telemetry.listen
    if not listen or ":" not in listen:
        return None
    tail = listen.rsplit(":", 1)[1]
    return int(tail) if tail.isdigit() else None


def classify(
    port: int,
    group: Tuple[Listener, ...],
    process: Optional[ProcessInfo],
    config: Config,
    table: ExporterTable,
) -> Finding:
    """Candidate or not, excluded or not: everything decidable without a probe."""
    settings = config.discovery
    kind, address, probe_address = address_rule(group)
    in_range = any(lo <= port <= hi for lo, hi in settings.port_ranges)
    base = Finding(port, group, process, kind, address, probe_address, in_port_range=in_range)
    reasons: List[str] = []
    by_port = table.by_port.get(port, ())
    if by_port:
        reasons.append("default port of " + "/".join(spec.name for spec in by_port))
    if in_range:
        lo, hi = next((lo, hi) for lo, hi in settings.port_ranges if lo <= port <= hi)
        reasons.append(f"in port range {lo}-{hi}")
    by_process = candidate_exporters(process, table)
    if by_process and process is not None:
        reasons.append(f"process {process.name or by_process[0].binaries[0]}")
    if not reasons:
        claimed = _claimed_name(process, table)
        if claimed:
            return replace(
                base,
                reason=f"not a candidate: process name {claimed!r} is not evidence (its "
                "executable is not root's alone); add the port to discovery.port_ranges",
            )
        return replace(base, reason="not a candidate (port and process unknown)")
    base = replace(base, candidate_reasons=tuple(reasons))
    if port in settings.exclude_ports:
        return replace(base, outcome=EXCLUDED, reason="excluded by discovery.exclude_ports")
    if port == own_port(config):
        return replace(base, outcome=EXCLUDED, reason="regagent's own telemetry endpoint")
    pattern = _excluded_process(process, settings.exclude_processes)
    if pattern is not None:
        return replace(
            base, outcome=EXCLUDED, reason=f"excluded by discovery.exclude_processes ({pattern})"
        )
    specs = (*by_process, *by_port)
    path = specs[0].metrics_path if specs else DEFAULT_PATH
    return replace(base, outcome=CANDIDATE, metrics_path=path)


def _claimed_name(process: Optional[ProcessInfo], table: ExporterTable) -> Optional[str]:
    """An exporter's binary name the process goes by without it being evidence, if any."""
    if process is None:
        return None
    names = sorted(process.names)
    return next((name for name in names if table.exporter_for_binary(name) is not None), None)


def _excluded_process(process: Optional[ProcessInfo], patterns: Sequence[str]) -> Optional[str]:
    if process is None:
        return None
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in process.names):
            return pattern
    return None


def candidate_paths(finding: Finding, table: ExporterTable) -> List[str]:
    """Metrics paths to try, most specific first, at most MAX_PATHS_PER_LISTENER."""
    paths = [finding.metrics_path]
    hinted = (*candidate_exporters(finding.process, table), *table.by_port.get(finding.port, ()))
    for spec in hinted:
        if spec.metrics_path not in paths:
            paths.append(spec.metrics_path)
    if DEFAULT_PATH not in paths:
        paths.append(DEFAULT_PATH)
    return paths[:MAX_PATHS_PER_LISTENER]


def identify(
    finding: Finding,
    settings: DiscoveryConfig,
    table: ExporterTable,
    prober: Prober,
    *,
    owner: Optional[Owner] = None,
) -> Finding:
    """Probes a candidate and names it by the strongest evidence (`evidence.name_listener`).

    The process is looked up (`owner`) only when the answer alone does not name it: a process
    only root could have started as an exporter is then the stronger evidence."""
    result: Optional[ProbeResult] = None
    path = finding.metrics_path
    for path in candidate_paths(finding, table):
        result = prober(
            finding.probe_address,
            finding.port,
            path,
            settings.probe_timeout,
            settings.probe_max_bytes,
        )
        if result.ok or result.timed_out:  # a slow listener is slow on every path
            break
    assert result is not None
    answer = result.exposition if result.ok else None
    in_range = finding.in_port_range
    naming, why = name_listener(
        finding.port, answer, finding.process, table, in_port_range=in_range
    )
    process = finding.process
    weaker = naming is None or naming.identified_by not in FROM_ANSWER
    if weaker and process is None and owner is not None:
        process = owner(finding)
        if process is not None:
            naming, why = name_listener(
                finding.port, answer, process, table, in_port_range=in_range
            )
    # The reason can quote the exporter (its Content-Type): keep it printable.
    failure = "" if result.ok else printable_text(result.reason, REASON_MAX)
    if naming is not None:
        reason = naming.reason
        if not result.ok:
            reason += f"; its answer: {failure}"
        elif naming.identified_by == PROCESS:
            reason += f"; its answer names no exporter{f' ({why})' if why else ''}"
        return replace(
            finding,
            process=process,
            outcome=IDENTIFIED,
            reason=printable_text(reason, REASON_MAX),
            exporter=naming.exporter,
            version=exporter_text(naming.version),
            identified_by=naming.identified_by,
            problem=failure,
            metrics_path=path,
            scheme=result.scheme,
        )
    if answer is None:
        return replace(
            finding,
            process=process,
            outcome=NOT_EXPORTER,
            reason=failure,
            metrics_path=path,
            timed_out=result.timed_out,
        )
    return replace(
        finding,
        process=process,
        outcome=UNKNOWN_EXPORTER,
        reason=why or "serves metrics, but no known exporter's fingerprint",
        exporter=UNKNOWN,
        version=exporter_text(answer.version_of()),
        metrics_path=path,
        scheme=result.scheme,
    )
