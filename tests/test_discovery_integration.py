"""Discovery against real listeners on this host: a real node_exporter, prometheus_client
processes posing as other exporters, a web page, a non-HTTP server, IPv6 and loopback listeners.

Every process is started by a fixture and stopped by pid when the test ends; every wait loop is
bounded. No assertion depends on wall-clock time.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from structlog.testing import capture_logs

from helpers.discovery import FAKE, only, stop, wait_listening
from helpers.fakes import discovery_for, full_pass, reading_of
from helpers.ports import free_port
from regagent.cli import discover_command
from regagent.config.model import Config, DiscoveryConfig, ExporterOverride, SyncConfig
from regagent.discovery.identify import (
    EXCLUDED,
    IDENTIFIED,
    LOOPBACK,
    NOT_EXPORTER,
    UNKNOWN_EXPORTER,
    WILDCARD,
    DiscoveryResult,
    Finding,
    discover,
)
from regagent.discovery.listeners import (
    listening_sockets_netlink,
    listening_sockets_proc,
)
from regagent.discovery.processes import ProcessResolver
from regagent.discovery.service import Discovery
from regagent.model import CRITICAL, PASSING

HERE = Path(__file__).parent
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
NODE = "192.0.2.10"


@dataclass
class Started:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def start() -> Iterator[Callable[..., Started]]:
    """Starts listeners (fake servers or node_exporter); all stopped by pid afterwards."""
    procs: List[subprocess.Popen[bytes]] = []

    def _start(kind: str, addr: str, *extra: str, port: Optional[int] = None) -> Started:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        port = port or free_port(family, "::1" if family == socket.AF_INET6 else "127.0.0.1")
        if kind == "node_exporter":
            listen = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            if addr == "":
                listen = f":{port}"
            argv = [
                NODE_EXPORTER,
                f"--web.listen-address={listen}",
                "--collector.disable-defaults",
                "--collector.loadavg",
            ]
        else:
            argv = [sys.executable, FAKE, kind, addr, str(port), *extra, "--lifetime", "120"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_listening(port, proc)
        return Started(port, proc)

    try:
        yield _start
    finally:
        for proc in procs:
            stop(proc)


def config_for(*ports: int, tmp: Path, **discovery: object) -> Config:
    ranges = tuple((p, p) for p in ports)
    settings = DiscoveryConfig(port_ranges=ranges, probe_timeout=2.0, **discovery)  # type: ignore[arg-type]
    return Config(discovery=settings, sync=SyncConfig(state_dir=str(tmp), deregister_after=3600))


def by_port(result: DiscoveryResult) -> Dict[int, Finding]:
    return {f.port: f for f in result.findings}


needs_node_exporter = pytest.mark.skipif(
    not os.path.exists(NODE_EXPORTER), reason="Debian's prometheus-node-exporter not installed"
)


@needs_node_exporter
def test_real_node_exporter_on_wildcard_is_identified_with_version(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    node = start("node_exporter", "")
    result = discover(config_for(node.port, tmp=tmp_path), list_listeners=only(node.port))
    finding = by_port(result)[node.port]
    assert finding.outcome == IDENTIFIED
    assert finding.exporter == "node_exporter"
    assert finding.version and finding.version[0].isdigit()
    assert finding.address_kind == WILDCARD
    assert finding.process is None  # a candidate by its port: the owner is not looked up


@needs_node_exporter
def test_node_exporter_found_by_process_name_alone(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    node = start("node_exporter", "")
    config = Config(sync=SyncConfig(state_dir=str(tmp_path)))  # no port ranges
    finding = by_port(discover(config, list_listeners=only(node.port)))[node.port]
    assert finding.candidate_reasons == ("process prometheus-node-exporter",)
    assert finding.outcome == IDENTIFIED
    assert finding.process is not None and finding.process.pid == node.pid
    assert "prometheus-node-exporter" in finding.process.names


def test_prometheus_client_posing_as_exporters(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    mysqld = start("exporter", "0.0.0.0", "mysqld_exporter_build_info", "0.14.0")
    redis = start("exporter", "127.0.0.1", "redis_exporter_build_info", "v1.50.0")
    ipv6 = start("exporter", "::1", "postgres_exporter_build_info", "0.12.1")
    result = discover(
        config_for(mysqld.port, redis.port, ipv6.port, tmp=tmp_path),
        list_listeners=only(mysqld.port, redis.port, ipv6.port),
    )
    found = by_port(result)
    assert (found[mysqld.port].exporter, found[mysqld.port].version) == (
        "mysqld_exporter",
        "0.14.0",
    )
    assert found[mysqld.port].address_kind == WILDCARD
    assert (found[redis.port].exporter, found[redis.port].version) == ("redis_exporter", "v1.50.0")
    assert found[redis.port].address_kind == LOOPBACK
    assert found[ipv6.port].exporter == "postgres_exporter"
    assert found[ipv6.port].probe_address == "::1"
    assert found[ipv6.port].listeners[0].family == socket.AF_INET6


def test_ipv6_wildcard_listener_is_probed_on_ipv6_loopback(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    server = start("exporter", "::", "memcached_exporter_build_info", "0.11.0")
    finding = by_port(
        discover(config_for(server.port, tmp=tmp_path), list_listeners=only(server.port))
    )[server.port]
    assert finding.address_kind == WILDCARD
    assert finding.probe_address == "::1"
    assert (finding.exporter, finding.version) == ("memcached_exporter", "0.11.0")


def test_non_exporters_are_rejected_with_reasons(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    html = start("html", "127.0.0.1")
    banner = start("banner", "127.0.0.1")
    silent = start("silent", "127.0.0.1")
    drip = start("drip", "127.0.0.1")
    config = config_for(html.port, banner.port, silent.port, drip.port, tmp=tmp_path)
    config = Config(
        discovery=DiscoveryConfig(
            port_ranges=config.discovery.port_ranges, probe_timeout=0.5, register_unknown=True
        ),
        sync=config.sync,
    )
    found = by_port(discover(config))
    assert found[html.port].outcome == NOT_EXPORTER
    assert found[html.port].reason == "not a metrics page (text/html)"
    assert found[banner.port].outcome == NOT_EXPORTER
    assert found[banner.port].reason.startswith("not HTTP")
    assert found[silent.port].reason == "timed out after 0.5s"
    assert found[drip.port].reason == "timed out after 0.5s"


def test_unknown_exporter_registered_only_with_register_unknown(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    # A build_info whose program cannot be a service name (uppercase) names nothing (issue 24:
    # `acme_app_build_info` names acme_app, see the next test).
    custom = start("exporter", "0.0.0.0", "AcmeApp_build_info", "2.3.4")
    off = config_for(custom.port, tmp=tmp_path)
    discovery = discovery_for(off, reading_of(only(custom.port)))
    result, desired = discovery.examine(NODE, now=1_000_000.0)
    assert result is not None
    finding = by_port(result)[custom.port]
    assert finding.outcome == UNKNOWN_EXPORTER
    assert finding.version == "2.3.4"
    assert desired.intents == ()
    on = config_for(custom.port, tmp=tmp_path, register_unknown=True)
    discovery.reconfigure(on)
    _, desired = discovery.examine(NODE, now=1_000_000.0)
    (intent,) = desired.intents
    assert intent.service.id == f"exporter-{custom.port}"
    assert intent.service.address == NODE
    assert intent.service.meta["exporter"] == "unknown"


def test_any_build_info_names_its_program_in_a_port_range(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    custom = start("exporter", "0.0.0.0", "acme_app_build_info", "2.3.4")
    discovery = discovery_for(config_for(custom.port, tmp=tmp_path), reading_of(only(custom.port)))
    result, desired = discovery.examine(NODE, now=1_000_000.0)
    assert result is not None
    finding = by_port(result)[custom.port]
    assert (finding.outcome, finding.exporter, finding.version) == (IDENTIFIED, "acme_app", "2.3.4")
    (intent,) = desired.intents  # no register_unknown needed: it is identified
    assert intent.service.id == f"acme-app-{custom.port}"
    assert intent.service.tags == ("acme_app",)
    meta = intent.service.meta
    assert (meta["exporter"], meta["exporter_version"], meta["identified_by"]) == (
        "acme_app",
        "2.3.4",
        "build_info",
    )


def test_exclusions_skip_probing(start: Callable[..., Started], tmp_path: Path) -> None:
    one = start("exporter", "0.0.0.0", "redis_exporter_build_info", "1")
    two = start("exporter", "0.0.0.0", "redis_exporter_build_info", "1")
    config = config_for(
        one.port, two.port, tmp=tmp_path, exclude_ports=(one.port,), exclude_processes=("pyth*",)
    )
    found = by_port(discover(config))
    assert found[one.port].outcome == EXCLUDED
    assert "exclude_ports" in found[one.port].reason
    assert found[two.port].outcome == EXCLUDED
    assert "exclude_processes (pyth*)" in found[two.port].reason


@needs_node_exporter
def test_discover_command_text_and_json(start: Callable[..., Started], tmp_path: Path) -> None:
    node = start("node_exporter", "")
    loop = start("exporter", "127.0.0.1", "mysqld_exporter_build_info", "0.14.0")
    html = start("html", "127.0.0.1")
    config = config_for(node.port, loop.port, html.port, tmp=tmp_path)
    discovery = discovery_for(config, reading_of(only(node.port, loop.port, html.port)))
    out = io.StringIO()
    assert discover_command(NODE, "json", out, discovery=discovery) == 0
    doc = json.loads(out.getvalue())
    rows = {row["port"]: row for row in doc["listeners"]}
    assert rows[node.port]["outcome"] == "identified"
    assert rows[node.port]["service_id"] == f"node-exporter-{node.port}"
    assert rows[loop.port]["service_id"] is None
    assert "loopback only" in rows[loop.port]["not_registered"]
    assert rows[html.port]["outcome"] == "not-exporter"
    (service,) = doc["services"]
    assert service["address"] == NODE
    assert service["status"] == PASSING
    assert not (tmp_path / "discovered.json").exists()  # discover never writes state

    text = io.StringIO()
    assert discover_command(NODE, "text", text, discovery=discovery) == 0
    report = text.getvalue()
    assert f"node-exporter-{node.port}" in report
    assert "loopback only" in report
    assert "not a metrics page (text/html)" in report
    assert "Would register 1 service(s):" in report


def test_vanish_and_return_within_grace_then_expiry(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    port = free_port(socket.AF_INET, "0.0.0.0")
    config = config_for(port, tmp=tmp_path)
    config = Config(
        discovery=config.discovery,
        sync=SyncConfig(state_dir=str(tmp_path), deregister_after=600.0),
    )
    discovery = discovery_for(config, reading_of(only(port)))
    exporter = start("exporter", "0.0.0.0", "node_exporter_build_info", "1.5.0", port=port)
    t0 = 1_800_000_000.0
    (present,) = full_pass(discovery, NODE, t0)
    assert present.status == (PASSING, f"node_exporter 1.5.0 serving /metrics on :{port}")

    stop(exporter.proc)
    (gone,) = full_pass(discovery, NODE, t0 + 30)
    assert gone.service == present.service  # same registration: no spurious write
    assert gone.status == (CRITICAL, f"not listening on :{port} since 2027-01-15T08:00:00Z")
    (still,) = full_pass(discovery, NODE, t0 + 300)
    assert still.status == gone.status  # stable output while vanished

    start("exporter", "0.0.0.0", "node_exporter_build_info", "1.5.0", port=port)
    (back,) = full_pass(discovery, NODE, t0 + 400)
    assert back.status == present.status
    state = json.loads((tmp_path / "discovered.json").read_text())
    entry = state["services"][f"node-exporter-{port}"]
    assert entry["first_seen"] == "2027-01-15T08:00:00Z"  # first sighting survives the gap


def test_vanished_exporter_dropped_after_deregister_after(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    port = free_port(socket.AF_INET, "0.0.0.0")
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((port, port),)),
        sync=SyncConfig(state_dir=str(tmp_path), deregister_after=60.0),
    )
    exporter = start("exporter", "0.0.0.0", "redis_exporter_build_info", "1.0", port=port)
    t0 = 1_800_000_000.0
    assert len(full_pass(discovery_for(config, reading_of(only(port))), NODE, t0)) == 1
    stop(exporter.proc)
    # A new Discovery: the state on disk, not memory, carries the first/last-seen times.
    assert [
        i.status[0]
        for i in full_pass(discovery_for(config, reading_of(only(port))), NODE, t0 + 60)
        if i.status
    ] == [CRITICAL]
    assert full_pass(discovery_for(config, reading_of(only(port))), NODE, t0 + 61) == ()
    state = json.loads((tmp_path / "discovered.json").read_text())
    assert state["services"] == {}


def test_corrupt_state_is_rebuilt_not_fatal(start: Callable[..., Started], tmp_path: Path) -> None:
    server = start("exporter", "0.0.0.0", "redis_exporter_build_info", "1.0")
    (tmp_path / "discovered.json").write_text("{ this is not json")
    config = config_for(server.port, tmp=tmp_path)
    (intent,) = full_pass(
        discovery_for(config, reading_of(only(server.port))), NODE, 1_800_000_000.0
    )
    assert intent.status is not None and intent.status[0] == PASSING
    state = json.loads((tmp_path / "discovered.json").read_text())
    assert list(state["services"]) == [f"redis-exporter-{server.port}"]


def test_override_renames_and_tags(start: Callable[..., Started], tmp_path: Path) -> None:
    server = start("exporter", "0.0.0.0", "redis_exporter_build_info", "1.0")
    config = config_for(
        server.port,
        tmp=tmp_path,
        overrides=(
            ExporterOverride(exporter="redis_exporter", name="redis-cache", tags=("cache",)),
            ExporterOverride(port=server.port, meta={"team": "db"}),
        ),
    )
    (intent,) = full_pass(
        discovery_for(config, reading_of(only(server.port))), NODE, 1_800_000_000.0
    )
    assert intent.service.id == f"redis-cache-{server.port}"
    assert intent.service.tags == ("cache", "redis_exporter")
    assert intent.service.meta["team"] == "db"


def test_proc_fallback_matches_netlink(start: Callable[..., Started]) -> None:
    start("exporter", "0.0.0.0", "redis_exporter_build_info", "1.0")
    start("exporter", "::1", "redis_exporter_build_info", "1.0")
    start("exporter", "::", "redis_exporter_build_info", "1.0")
    start("html", "127.0.0.1")
    # Established connections must not show up in either listing.
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            client_port = client.getsockname()[1]
            netlink = listening_sockets_netlink()
            proc = listening_sockets_proc()
    assert netlink == proc
    assert {(lst.address, lst.family) for lst in netlink} >= {
        ("0.0.0.0", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("::", socket.AF_INET6),
    }
    assert client_port not in {lst.port for lst in netlink}


def test_process_owner_lookup_is_cached_by_inode(start: Callable[..., Started]) -> None:
    server = start("exporter", "127.0.0.1", "redis_exporter_build_info", "1.0")
    (listener,) = [lst for lst in listening_sockets_netlink() if lst.port == server.port]
    resolver = ProcessResolver()
    first = resolver.resolve([listener.inode], {listener.inode: listener.uid})
    owner = first[listener.inode]
    assert owner is not None and owner.pid == server.pid
    assert resolver.resolve([listener.inode]) == first
    assert resolver.scans == 1


def _discover_as_nobody(config: Config) -> Tuple[int, str]:
    """Runs discover_command in a forked child that dropped root (bounded wait)."""
    nobody = pwd.getpwnam("nobody")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = io.StringIO()
            code = discover_command(NODE, "json", out, discovery=Discovery(config))
            os.write(write_fd, json.dumps({"code": code, "out": out.getvalue()}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    try:
        for _ in range(10_000):
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    doc = json.loads(b"".join(chunks).decode())
    return int(doc["code"]), str(doc["out"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_discover_works_unprivileged_with_process_unknown(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    server = start("exporter", "0.0.0.0", "mysqld_exporter_build_info", "0.14.0")
    code, out = _discover_as_nobody(config_for(server.port, tmp=tmp_path))
    assert code == 0
    rows = {row["port"]: row for row in json.loads(out)["listeners"]}
    assert rows[server.port]["process"] is None
    assert rows[server.port]["exporter"] == "mysqld_exporter"
    assert rows[server.port]["version"] == "0.14.0"


def test_loopback_only_exporter_is_reported_once(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    server = start("exporter", "127.0.0.1", "redis_exporter_build_info", "1.0")
    config = config_for(server.port, tmp=tmp_path)
    discovery = discovery_for(config, reading_of(only(server.port)))
    with capture_logs() as logs:
        for step in range(3):
            assert full_pass(discovery, NODE, 1_800_000_000.0 + step) == ()
    reports = [e for e in logs if e["event"] == "exporter_not_registered"]
    assert len(reports) == 1
    assert reports[0]["log_level"] == "warning"
    assert reports[0]["listener"] == f"127.0.0.1:{server.port}"
