"""A listener whose answer confirms nothing is registered by its process only when only root could
have started it as that exporter (issue 24; README "Trust model"), played for real.

Debian's mongodb_exporter answers in 12 s while MongoDB is down, bird_exporter with an empty
page: their process names them, because a packaged exporter runs from a root-owned executable
as root or a system account (its unit's `User=`). Here the exporter is a root-owned copy of
python3 called `prometheus-silent-exporter` (Debian's naming) in a root-owned directory: it
listens on a free port outside every configured range and never answers. Run as root or as a
system account it is registered, critical; run by a regular user (setpriv), or from a copy the
user owns, or as a user's process that only calls itself an exporter, it is not. A user's
server that answers `foo_build_info` is a candidate only on a port the configuration or the
exporter table names; on a free default port of the table, its answer names it only by a name
no ordinary service has (`*_exporter`), never `vault`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from helpers.discovery import only, stop, wait_listening
from helpers.fakes import discovery_for, reading_of
from helpers.ports import free_port
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.discovery.exporters import load_exporter_table
from regagent.discovery.identify import (
    IDENTIFIED,
    NOT_CANDIDATE,
    NOT_EXPORTER,
    UNKNOWN_EXPORTER,
    Finding,
)
from regagent.discovery.intents import IntentSet
from regagent.discovery.processes import describe_process
from regagent.model import CRITICAL

NODE = "192.0.2.10"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
    reason="needs root, setpriv and Debian's python3 (with python3-prometheus-client)",
)
pytestmark = needs_root
PROGRAM = "prometheus-silent-exporter"
SYSTEM_UID = 990  # a system account (<= SYS_UID_MAX, 999 by default); no passwd entry needed
USER_UID = 4242  # a regular user's

# Accepts connections and never answers: every probe runs out of time, as against an exporter
# whose backend is down.
SILENT = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(16)
held = []
end = time.monotonic() + 120
server.settimeout(1.0)
while time.monotonic() < end:
    try:
        held.append(server.accept()[0])
    except OSError:
        pass
"""

# A user's own server that says it is program `foo` (or the program in argv[2]).
FOO = """
import sys, time
from prometheus_client import CollectorRegistry, Gauge, start_http_server
registry = CollectorRegistry()
program = sys.argv[2] if len(sys.argv) > 2 else "foo"
info = Gauge(program + "_build_info", "x", ["version"], registry=registry)
info.labels(version="6.6.6").set(1)
start_http_server(int(sys.argv[1]), addr="0.0.0.0", registry=registry)
time.sleep(120)
"""


def as_uid(uid: int) -> List[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@pytest.fixture
def program_dir() -> Iterator[Path]:
    """A directory root owns (mode 755), for the exporter's executable."""
    directory = Path(tempfile.mkdtemp(prefix="regagent-vouch-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def install(directory: Path, owner: int = 0) -> Path:
    """A copy of python3 called like a Debian exporter, owned by `owner` (root: root's alone)."""
    program = directory / PROGRAM
    shutil.copy("/usr/bin/python3", program)
    program.chmod(0o755)
    os.chown(program, owner, owner)
    os.chown(directory, owner, owner)
    return program


def serve(argv: List[str], port: int, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*argv, str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/"
    )
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def examine(port: int, state: Path, *ranges: Tuple[int, int]) -> Tuple[Finding, IntentSet]:
    """One `discover` of `port` alone; quick timeouts (a silent listener uses them all)."""
    settings = DiscoveryConfig(port_ranges=ranges, probe_timeout=0.3, identify_timeout=0.5)
    config = Config(discovery=settings, sync=SyncConfig(state_dir=str(state)))
    result, wanted = discovery_for(config, reading_of(only(port))).examine(NODE, now=1.8e9)
    assert result is not None
    (finding,) = result.findings
    return finding, wanted


def free_table_port() -> int:
    """A default port of the exporter table that nothing on this host listens on (v4 or v6)."""
    for port in sorted(load_exporter_table().by_port):
        try:
            for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.bind((addr, port))
        except OSError:
            continue
        return port
    pytest.skip("every default port of the exporter table is taken on this host")


def registered(wanted: IntentSet) -> Dict[str, Optional[Tuple[str, str]]]:
    return {i.service.id: i.status for i in wanted.intents}


@pytest.mark.parametrize(("who", "argv"), [("root", []), ("a system account", as_uid(SYSTEM_UID))])
def test_a_silent_exporter_root_or_a_system_account_runs_is_registered_critical(
    who: str, argv: List[str], program_dir: Path, tmp_path: Path
) -> None:
    program = install(program_dir)
    port = free_port(addr="0.0.0.0")
    proc = serve([*argv, str(program), "-c", SILENT], port)
    try:
        info = describe_process(proc.pid)
        assert info.exe == str(program) and info.exe_trusted and info.system_user, who
        finding, wanted = examine(port, tmp_path)
    finally:
        stop(proc)
    assert (finding.outcome, finding.exporter, finding.identified_by) == (
        IDENTIFIED,
        "silent_exporter",
        "process",
    )
    sid = f"silent-exporter-{port}"
    output = f"silent_exporter on :{port}: no metrics from /metrics (timed out after 0.3s)"
    assert registered(wanted) == {sid: (CRITICAL, output)}
    (intent,) = wanted.intents
    assert intent.service.meta["identified_by"] == "process"


def test_a_regular_user_running_the_root_owned_exporter_registers_nothing(
    program_dir: Path, tmp_path: Path
) -> None:
    program = install(program_dir)
    port = free_port(addr="0.0.0.0")
    proc = serve([*as_uid(USER_UID), str(program), "-c", SILENT], port)
    try:
        info = describe_process(proc.pid)
        assert info.exe_trusted and info.uid == USER_UID and not info.system_user
        finding, wanted = examine(port, tmp_path)
    finally:
        stop(proc)
    # Its name is still a candidate's (the executable is root's alone), so an answer that
    # confirmed it would count; a silence does not, whatever port the user picks.
    assert finding.candidate_reasons == ("process prometheus-silent-exporter",)
    assert finding.outcome == NOT_EXPORTER and finding.reason == "timed out after 0.5s"
    assert registered(wanted) == {}


def test_a_users_own_copy_of_an_exporter_is_not_even_a_candidate(
    program_dir: Path, tmp_path: Path
) -> None:
    program = install(program_dir, owner=USER_UID)  # the user could have written it
    port = free_port(addr="0.0.0.0")
    proc = serve([*as_uid(USER_UID), str(program), "-c", SILENT], port)
    try:
        finding, wanted = examine(port, tmp_path)
    finally:
        stop(proc)
    assert finding.outcome == NOT_CANDIDATE
    assert "process name 'prometheus-silent-exporter' is not evidence" in finding.reason
    assert registered(wanted) == {}


def test_a_users_process_named_like_an_exporter_registers_nothing_even_in_a_range(
    tmp_path: Path,
) -> None:
    # argv[0] and comm say prometheus-mongodb-exporter; the executable is root's python3.
    port = free_port(addr="0.0.0.0")
    named = ["bash", "-c", 'exec -a prometheus-mongodb-exporter /usr/bin/python3 -c "$@"']
    proc = serve([*as_uid(USER_UID), *named, "bash", SILENT], port)
    try:
        assert "prometheus-mongodb-exporter" in describe_process(proc.pid).names
        outside, outside_wanted = examine(port, tmp_path)
        inside, inside_wanted = examine(port, tmp_path, (port, port))
    finally:
        stop(proc)
    assert outside.outcome == NOT_CANDIDATE and registered(outside_wanted) == {}
    # in a configured range it is probed, and its silence names nothing
    assert inside.outcome == NOT_EXPORTER and registered(inside_wanted) == {}


def test_a_users_build_info_counts_only_on_a_port_the_configuration_names(tmp_path: Path) -> None:
    port = free_port(addr="0.0.0.0")
    proc = serve([*as_uid(USER_UID), "/usr/bin/python3", "-c", FOO], port)
    try:
        outside, outside_wanted = examine(port, tmp_path)
        inside, inside_wanted = examine(port, tmp_path, (port, port))
    finally:
        stop(proc)
    assert outside.outcome == NOT_CANDIDATE and registered(outside_wanted) == {}
    # The operator asked for this port: any build_info names its program there, bounded by
    # discovery.max_new_per_cycle like every new exporter.
    assert (inside.outcome, inside.exporter, inside.version) == (IDENTIFIED, "foo", "6.6.6")
    assert list(registered(inside_wanted)) == [f"foo-{port}"]


@pytest.mark.parametrize("program", ["vault", "web"])
def test_a_users_build_info_on_a_table_port_cannot_take_an_ordinary_services_name(
    program: str, tmp_path: Path
) -> None:
    # A regular user binds a free default port of the table (a candidate by port alone) and
    # answers `vault_build_info`: registered as `vault`, it would join every `vault` lookup.
    port = free_table_port()
    proc = serve([*as_uid(USER_UID), "/usr/bin/python3", "-c", FOO], port, program)
    try:
        finding, wanted = examine(port, tmp_path)
    finally:
        stop(proc)
    assert finding.outcome == UNKNOWN_EXPORTER
    assert f"{program}_build_info names {program}, which the exporter table does not know" in (
        finding.reason
    )
    assert registered(wanted) == {}


def test_a_users_exporter_build_info_on_a_table_port_names_it_as_an_exporter(
    tmp_path: Path,
) -> None:
    # A name no ordinary service has: the issue 24 rule (any *_build_info names itself) holds.
    port = free_table_port()
    proc = serve([*as_uid(USER_UID), "/usr/bin/python3", "-c", FOO], port, "vault_exporter")
    try:
        finding, wanted = examine(port, tmp_path)
    finally:
        stop(proc)
    assert (finding.outcome, finding.exporter) == (IDENTIFIED, "vault_exporter")
    assert list(registered(wanted)) == [f"vault-exporter-{port}"]


# In a network namespace of its own (addresses of the documentation ranges on its lo):
# root's silent `prometheus-mongodb-exporter` on [2001:db8::1]:PORT, a regular user's silent
# listener on 203.0.113.5:PORT. The port is one service at one address, the user's (IPv4 first);
# root's process must not vouch for it. Prints what discovery made of the port.
SPLIT_OWNERS = """
import json, os, subprocess, sys, time
from helpers.discovery import only, stop
from helpers.fakes import discovery_for, reading_of
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
silent, state, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
user = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]
procs = []
try:
    for argv in (
        ["bash", "-c", 'exec -a prometheus-mongodb-exporter /usr/bin/python3 "$@"', "x"],
        [*user, "/usr/bin/python3"],
    ):
        address = "2001:db8::1" if not procs else "203.0.113.5"
        procs.append(subprocess.Popen([*argv, "-c", silent, address, str(port)], cwd="/"))
        for _ in range(400):  # bounded: 10 s
            if any(lst.address == address for lst in only(port)()):
                break
            time.sleep(0.025)
        else:
            raise SystemExit(f"nothing listens on {address}")
    settings = DiscoveryConfig(probe_timeout=0.3, identify_timeout=0.5)
    config = Config(discovery=settings, sync=SyncConfig(state_dir=state))
    result, wanted = discovery_for(config, reading_of(only(port))).examine(
        "192.0.2.10", now=1.8e9
    )
    (finding,) = result.findings
    print(json.dumps({
        "listeners": len(finding.listeners),
        "address": finding.address,
        "outcome": finding.outcome,
        "identified_by": finding.identified_by,
        "registered": sorted(i.service.id for i in wanted.intents),
    }))
finally:
    for proc in procs:
        stop(proc)
"""

# SILENT on a given address: argv[1] address, argv[2] port.
SILENT_AT = SILENT.replace(
    "server = socket.socket()",
    'server = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)',
).replace('("0.0.0.0", int(sys.argv[1]))', "(sys.argv[1], int(sys.argv[2]))")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_roots_exporter_on_one_address_does_not_vouch_for_a_users_listener_on_another(
    tmp_path: Path,
) -> None:
    setup = (
        "ip link set lo up\n"
        "ip addr add 203.0.113.5/32 dev lo\n"
        "ip -6 addr add 2001:db8::1/128 dev lo nodad\n"
        'exec "$@"\n'
    )
    state = tmp_path / "state"
    state.mkdir()
    tests = str(Path(__file__).parent)
    shown = subprocess.run(
        [
            *["unshare", "--net", "sh", "-ec", setup, "netns", sys.executable, "-c", SPLIT_OWNERS],
            *[SILENT_AT, str(state), "9216"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": tests},
    )
    assert shown.returncode == 0, shown.stderr
    seen = json.loads(shown.stdout.splitlines()[-1])  # after the log lines
    assert (seen["listeners"], seen["address"]) == (2, "203.0.113.5")
    assert seen["identified_by"] != "process", seen
    assert seen["outcome"] != IDENTIFIED and seen["registered"] == []
