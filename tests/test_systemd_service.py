"""The Debian package under a real systemd: Debian 12 booted in a container (tests/systemd_box.py),
the .deb installed there with apt-get, the service run, reloaded, frozen, stopped, upgraded and
removed by that container's own systemd, with the Consul emulator on the host end of a veth pair.

The tests run in order on one container and each starts from what the previous left, as an
operator's host would: install, configure, break and repair, upgrade, remove, purge. What the
unit file promises (systemd/README.md) and what README.md says the sandbox costs are measured
here. Two drop-ins shorten waits, and say so: WatchdogSec=10s for the watchdog test (the
shipped 120 s would cost CI minutes) and the site configuration's short sync interval.

Skipped, with the reason, only where systemd-nspawn cannot run (not root, no cgroup file
system); a missing program fails (CI installs systemd-container and debootstrap).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from consulsim import SimCluster
from systemd_box import SystemdBox, cached_root, unavailable_reason

REPO = Path(__file__).resolve().parent.parent
UNIT = "regagent.service"
UNIT_FILE = Path("systemd") / UNIT
NODE = "regagent-box"
SITE = "/etc/regagent/conf.d/10-site.yaml"
BROKEN = "/etc/regagent/conf.d/20-broken.yaml"
SHIPPED = "/etc/regagent/conf.d/00-regagent.yaml"
DROPINS = "/etc/systemd/system/regagent.service.d"
TOKEN_FILE = "/etc/regagent/consul.token"
SECRET = "5ec7e7aa-box0-4e1d-9cab-5ec7e7abcdef"  # the ACL token: must never reach the journal
TELEMETRY_PORT = 9555
# The contract of systemd/README.md: SIGTERM ends the process within this many seconds.
STOP_BOUND_S = 20
MAX_EXPOSURE = 2.0
# journald's priority for each level (sd-daemon(3) prefixes written by regagent.logs).
PRIORITY = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # MESSAGE_ID of systemd's "Started ..."
SECURITY_OUT = REPO / "dist" / "systemd-security-inside.txt"  # .ci/run prints it

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no systemd container: {unavailable_reason()}"
)


def wait_for(what: str, check: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    """Polls `check` until it returns something true; fails with `what` after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(step)


# ------------------------------------------------------------------------------- fixtures


def version_of(tree: Path) -> str:
    text = (tree / "agent" / "regagent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "no __version__"
    return match.group(1)


def build_next_version(tmp: Path) -> Tuple[str, Path]:
    """Version N+1 (N with `.1` appended), built by packaging/build from a copy of this tree."""
    tree = tmp / "tree"
    caches = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")

    def ignore(directory: str, names: List[str]) -> Set[str]:
        top = {".git", ".venv", "dist", "build"} if Path(directory) == REPO else set()
        return set(caches(directory, names)) | (top & set(names))

    shutil.copytree(REPO, tree, ignore=ignore)
    init = tree / "agent" / "regagent" / "__init__.py"
    current = version_of(tree)
    following = f"{current}.1"
    init.write_text(init.read_text().replace(f'"{current}"', f'"{following}"'))
    result = subprocess.run(
        [str(tree / "packaging" / "build"), "deb"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return following, tree / "dist" / f"regagent_{following}_all.deb"


@dataclass(frozen=True)
class Debs:
    """The packages of version N (this tree) and N+1, in a directory the container sees."""

    directory: Path
    version: str
    following: str


@pytest.fixture(scope="module")
def debs(deb_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """This tree's deb and one of the next version, bound read-only into the container."""
    following, next_deb = build_next_version(tmp_path_factory.mktemp("next"))
    directory = tmp_path_factory.mktemp("debs")
    directory.chmod(0o755)
    shutil.copy(deb_package, directory)
    shutil.copy(next_deb, directory)
    return Debs(directory, version_of(REPO), following)


@pytest.fixture(scope="module")
def box(debs: Debs) -> Iterator[SystemdBox]:
    """Debian 12 booted with systemd as PID 1, package lists fresh; powered off afterwards."""
    with SystemdBox(cached_root(), binds=[debs.directory]) as booted:
        result = booted.run(["apt-get", "update", "-q"], timeout=300, host_network=True)
        assert result.returncode == 0, result.stdout + result.stderr
        yield booted


@pytest.fixture(scope="module")
def cluster(box: SystemdBox) -> Iterator[SimCluster]:
    """The three-server emulator on the host end of the container's veth."""
    with SimCluster(
        servers=3, bind=box.host_address, election_delay="0.3s", rpc_hold="0.2s"
    ) as sim:
        sim.wait_for_leader()
        yield sim


# ------------------------------------------------------------------------------- helpers


def apt(box: SystemdBox, *args: str, cwd: str = "/") -> str:
    """apt-get inside the container, through the host's network (the mirror)."""
    result = box.run(
        ["sh", "-c", 'cd "$0" && exec apt-get -y -q -o DPkg::Lock::Timeout=120 "$@"', cwd, *args],
        timeout=600,
        host_network=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def journal(box: SystemdBox, *args: str, since: int = 0) -> List[Dict[str, Any]]:
    """`journalctl -u regagent -o json ARGS`, one dict per entry; with `since` (a `now_usec()`
    taken earlier), only the entries written after it."""
    out = box.must(["journalctl", "--no-pager", "-u", UNIT, "-o", "json", *args])
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) > since]


def daemon_lines(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The entries the daemon wrote on stderr (not systemd's own about the unit)."""
    return [e for e in entries if e.get("_TRANSPORT") == "stdout"]


def events(entries: List[Dict[str, Any]]) -> List[str]:
    """The `event` of each of the daemon's JSON lines."""
    lines = [str(e["MESSAGE"]) for e in daemon_lines(entries)]
    return [json.loads(line).get("event", "") for line in lines if line.startswith("{")]


def now_usec() -> int:
    """A mark in the journal's own clock (the container shares this kernel's). Not a cursor:
    Debian 12's journalctl, given --after-cursor with -u and -p filters, sometimes left out the
    first matching entry after it (two runs in three, in this container)."""
    return time.time_ns() // 1000


def show(box: SystemdBox, *properties: str) -> Dict[str, str]:
    return box.show(UNIT, *properties)


def status_text(box: SystemdBox) -> str:
    return show(box, "StatusText")["StatusText"]


def main_pid(box: SystemdBox) -> int:
    return int(show(box, "MainPID")["MainPID"])


def registered(cluster: SimCluster) -> Dict[str, Dict[str, Any]]:
    """Service ID -> service of the box's node, as the emulator holds them."""
    return {s["ID"]: s for s in cluster.catalog()["services"] if s["Node"] == NODE}


def check_status(cluster: SimCluster, service_id: str) -> str:
    """The status of the box's check on `service_id`, as the emulator holds it."""
    checks = cluster.catalog()["checks"]
    found = [c for c in checks if c["Node"] == NODE and c.get("ServiceID") == service_id]
    assert len(found) == 1, found
    status: str = found[0]["Status"]
    return status


def site_config(cluster: SimCluster, box: SystemdBox) -> str:
    """/etc/regagent/conf.d/10-site.yaml: the emulator, short cycles, telemetry on the veth."""
    return (
        "consul:\n"
        f"  servers: [{', '.join(cluster.addresses)}]\n"
        f"  token_file: {TOKEN_FILE}\n"
        # Short, so that a wedged call is not mistaken for the 10 s watchdog's stall (README:
        # half of WatchdogSec must exceed the longest single call).
        "  connect_timeout: 1s\n"
        "  read_timeout: 3s\n"
        f"node:\n  name: {NODE}\n"
        "sync:\n  interval: 2s\n  jitter: 0s\n"
        'discovery:\n  port_ranges: ["19100-19100"]\n'
        f'telemetry:\n  listen: "{box.address}:{TELEMETRY_PORT}"\n'
    )


def metrics(box: SystemdBox) -> str:
    url = f"http://{box.address}:{TELEMETRY_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
    return text


def successful_cycles(box: SystemdBox) -> float:
    try:
        text = metrics(box)
    except OSError:
        return -1
    match = re.search(r'^regagent_sync_cycles_total\{result="success"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0


def wait_for_cycles(box: SystemdBox, count: int = 2, timeout: float = 30) -> None:
    """Until `count` more cycles have succeeded (read from the daemon's own metrics)."""
    start = max(0.0, successful_cycles(box))  # -1: the endpoint is not up yet
    wait_for(
        f"{count} more successful cycles", lambda: successful_cycles(box) >= start + count, timeout
    )


def daemon_reload_and_restart(box: SystemdBox) -> None:
    box.must(["systemctl", "daemon-reload"])
    box.must(["systemctl", "restart", UNIT], timeout=150)


def drop_in(box: SystemdBox, name: str, text: Optional[str]) -> None:
    """Writes (or with None removes) a drop-in of the unit; the caller reloads systemd."""
    if text is None:
        box.must(["rm", "-f", f"{DROPINS}/{name}"])
    else:
        box.must(["mkdir", "-p", DROPINS])
        box.write(f"{DROPINS}/{name}", text)


# ------------------------------------------------------------------------------- the tests


def test_apt_get_installs_and_starts_it_with_the_shipped_defaults(
    box: SystemdBox, debs: Debs
) -> None:
    out = apt(box, "install", f"./regagent_{debs.version}_all.deb", cwd=str(debs.directory))
    # Debian's own libraries came from the mirror, not from the package.
    for library in ("python3-structlog", "python3-consul2", "python3-prometheus-client"):
        assert re.search(rf"^Get:\d+ \S+ \S+ \S+ {library} ", out, re.M), library
    user = box.must(["getent", "passwd", "regagent"]).strip().split(":")
    assert int(user[2]) < 1000 and user[5:] == ["/var/lib/regagent", "/usr/sbin/nologin"], user
    assert box.must(["stat", "-c", "%U:%G %a", "/var/lib/regagent"]).split() == [
        "regagent:regagent",
        "750",
    ]
    assert box.must(["systemctl", "is-enabled", UNIT]).strip() == "enabled"
    state = show(box, "ActiveState", "SubState", "User", "NRestarts")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "User": "regagent",
        "NRestarts": "0",
    }, state
    # No Consul at the shipped default 127.0.0.1:8500: up, and saying what is wrong.
    assert status_text(box) == "no Consul server reachable (1 tried)"
    status = box.run(["systemctl", "status", "--no-pager", "--lines=0", UNIT]).stdout
    assert 'Status: "no Consul server reachable (1 tried)"' in status, status
    # READY=1 came after the first attempted cycle: its failure is logged before systemd's
    # "Started" (which systemd writes when READY=1 arrives).
    entries = journal(box)
    kinds = [
        "systemd: Started"
        if e.get("MESSAGE_ID") == UNIT_STARTED
        else json.loads(e["MESSAGE"])["event"]
        for e in entries
        if e.get("MESSAGE_ID") == UNIT_STARTED or e.get("_TRANSPORT") == "stdout"
    ]
    assert kinds.index("sync_failed") < kinds.index("systemd: Started"), kinds


def test_reload_onto_the_emulator_registers_debians_node_exporter(
    box: SystemdBox, cluster: SimCluster
) -> None:
    apt(box, "install", "--no-install-recommends", "prometheus-node-exporter")
    wait_for("node_exporter listening on :9100", partial(port_listening, box, 9100), 30)
    box.write(TOKEN_FILE, f"{SECRET}\n", mode="0640")
    box.must(["chgrp", "regagent", TOKEN_FILE])
    box.write(SITE, site_config(cluster, box))
    pid = main_pid(box)
    box.must(["systemctl", "reload", UNIT])
    service = wait_for(
        "node_exporter registered in the emulator",
        lambda: registered(cluster).get("node-exporter-9100"),
        30,
    )
    assert service["Address"] == box.address and service["Port"] == 9100
    assert service["Meta"]["exporter"] == "node_exporter"
    assert service["Meta"]["managed-by"] == "regagent"
    wait_for("STATUS= in sync", lambda: status_text(box).startswith("in sync: "), 30)
    assert box.host_address in status_text(box) or any(
        a in status_text(box) for a in cluster.addresses
    ), status_text(box)
    assert main_pid(box) == pid, "a reload must not restart the process"
    assert f"regagent-{TELEMETRY_PORT}" in registered(cluster)  # its own endpoint, scrapeable


def test_a_broken_reload_keeps_the_old_configuration(box: SystemdBox, cluster: SimCluster) -> None:
    pid = main_pid(box)
    box.write(BROKEN, "sync:\n  interval: soon\n")
    box.must(["systemctl", "reload", UNIT])
    wait_for("STATUS= says: reload rejected", lambda: "reload rejected" in status_text(box), 30)
    assert "(old configuration kept)" in status_text(box), status_text(box)
    assert main_pid(box) == pid and show(box, "ActiveState")["ActiveState"] == "active"
    # Still syncing with the old configuration, and every later STATUS= still says so.
    wait_for_cycles(box)
    text = status_text(box)
    assert text.startswith("in sync: ") and "reload rejected" in text, text
    status = box.run(["systemctl", "status", "--no-pager", "--lines=0", UNIT]).stdout
    assert "configuration reload rejected" in status, status
    assert "node-exporter-9100" in registered(cluster)

    # At start, an invalid configuration is exit 2: the unit stays failed, no restart loop.
    restarts = show(box, "NRestarts")["NRestarts"]
    mark = now_usec()
    result = box.run(["systemctl", "restart", UNIT], timeout=150)
    assert result.returncode != 0
    failed = show(box, "ActiveState", "Result", "ExecMainStatus")
    assert failed == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "2"}
    time.sleep(12)  # longer than RestartSec=10s: a restart would have happened by now
    assert show(box, "ActiveState", "NRestarts") == {
        "ActiveState": "failed",
        "NRestarts": restarts,
    }

    errors = [e["MESSAGE"] for e in journal(box, "-p", "err", since=mark)]
    assert "regagent: invalid configuration:" in errors, errors  # at error priority
    box.must(["rm", BROKEN])
    box.must(["systemctl", "start", UNIT], timeout=150)
    wait_for("STATUS= in sync again", lambda: status_text(box).startswith("in sync: "), 30)
    assert "rejected" not in status_text(box)


def test_discovery_by_port_and_by_fingerprint_as_regagent_in_the_sandbox(
    box: SystemdBox, cluster: SimCluster
) -> None:
    # Two more node_exporters as user prometheus, run by the container's systemd: 19100 is in
    # discovery.port_ranges (found by port, identified by what it serves); 19105 is neither a
    # known port nor in a range, so only its process name could make it a candidate.
    for port in (19100, 19105):
        box.must(
            [
                "systemd-run",
                f"--unit=extra-node-exporter-{port}",
                "--uid=prometheus",
                "--gid=prometheus",
                "/usr/bin/prometheus-node-exporter",
                f"--web.listen-address=:{port}",
                "--collector.disable-defaults",
                "--collector.loadavg",
            ]
        )
    for port in (19100, 19105):
        wait_for(f":{port} listening", partial(port_listening, box, port), 30)
    service = wait_for(
        "the exporter in the port range registered",
        lambda: registered(cluster).get("node-exporter-19100"),
        30,
    )
    assert service["Meta"]["exporter"] == "node_exporter"
    wait_for_cycles(box, 3)  # the daemon has looked at 19105 several times since
    assert "node-exporter-19105" not in registered(cluster)
    # Every target passing, the agent's own endpoint too (registered by itself, not discovered).
    for service_id in ("node-exporter-9100", "node-exporter-19100", f"regagent-{TELEMETRY_PORT}"):
        assert check_status(cluster, service_id) == "passing", service_id

    # The same listeners seen by root without a sandbox, and by user regagent without one
    # (a probe that times out on a busy CI machine is asked again, a bounded number of times).
    as_root = discover(box, [])
    as_user = discover(box, ["runuser", "-u", "regagent", "--"])
    assert as_root[19105]["outcome"] == "identified", as_root[19105]
    assert (as_root[19105]["process"] or {}).get("name") == "prometheus-node-exporter"
    assert as_user[19105]["outcome"] == "not-candidate", as_user[19105]
    for seen in (as_root, as_user):
        for port in (9100, 19100):
            assert seen[port]["outcome"] == "identified", seen[port]

    # The state file: written by the daemon, its own, private.
    assert box.must(["stat", "-c", "%U:%G %a", "/var/lib/regagent/discovered.json"]).split() == [
        "regagent:regagent",
        "600",
    ]
    state = box.read("/var/lib/regagent/discovered.json")
    assert "node-exporter-9100" in state and "node-exporter-19100" in state

    # An operator checks a change as root on the installed host (README's advice): the daemon's
    # state is read as the daemon's, with no "chown" advice (which would break the daemon), and
    # stays the daemon's.
    dry = box.run(["regagent", "sync", "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert "untrusted" not in dry.stderr and "chown" not in dry.stderr, dry.stderr
    assert "discovery_state_adopted" not in dry.stderr, dry.stderr
    assert box.must(["stat", "-c", "%U", "/var/lib/regagent/node.json"]).strip() == "regagent"


def port_listening(box: SystemdBox, port: int) -> bool:
    return f":{port} " in box.must(["ss", "-Htln"])


def discover(box: SystemdBox, prefix: List[str], attempts: int = 3) -> Dict[int, Dict[str, Any]]:
    """`regagent discover` as `prefix` says, by listening port; asked again (bounded) while a
    probe failed, which a slow answer on a loaded machine can cause."""
    for _ in range(attempts):
        out = box.must([*prefix, "regagent", "discover", "--format", "json"])
        seen = {item["port"]: item for item in json.loads(out)["listeners"]}
        if all(item["outcome"] != "not-exporter" for item in seen.values()):
            break
    return seen


def test_the_sandbox_is_applied_and_scored_inside(box: SystemdBox) -> None:
    pid = main_pid(box)
    status = box.read(f"/proc/{pid}/status")
    uid = box.must(["id", "-u", "regagent"]).strip()
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
    for field in ("CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1"):
        assert field in status, status
    assert re.search(r"^Seccomp:\t2$", status, re.M), status
    mounts = {m.split()[4]: m for m in box.read(f"/proc/{pid}/mountinfo").splitlines()}
    assert " ro," in f" {mounts['/'].split()[5]},", mounts["/"]  # ProtectSystem=strict
    assert mounts["/var/lib/regagent"].split()[5].startswith("rw"), mounts["/var/lib/regagent"]
    assert "hidepid=invisible" in mounts["/proc"], mounts["/proc"]  # ProtectProc=invisible
    rss = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert rss, status

    # The exposure score systemd computes for the loaded unit, inside.
    out = box.must(["systemd-analyze", "security", "--no-pager", UNIT])
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, out
    score = float(match.group(1))
    offline = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(REPO / UNIT_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    offline_score = re.search(r"Overall exposure level for .*", offline)
    assert offline_score, offline
    report = (
        f"systemd-analyze security {UNIT}, inside a booted Debian 12: {match.group(0)}\n"
        f"(offline: {offline_score.group(0)}; daemon RSS {int(rss.group(1)) / 1024:.0f} MiB)\n"
    )
    SECURITY_OUT.parent.mkdir(exist_ok=True)
    SECURITY_OUT.write_text(report)
    print(report, out, sep="\n")
    assert score <= MAX_EXPOSURE, out


def test_the_watchdog_restarts_a_frozen_daemon(box: SystemdBox) -> None:
    drop_in(box, "watchdog.conf", "[Service]\nWatchdogSec=10s\n")  # shipped: 120s
    daemon_reload_and_restart(box)
    before = show(box, "MainPID", "NRestarts")
    mark = now_usec()
    # Frozen mid-flight: no step completes, no ping goes out (the pinging thread is frozen too).
    box.must(["systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", UNIT])
    # Killed within WatchdogSec of its last ping, started again RestartSec=10s later.

    def restarted() -> Optional[Dict[str, str]]:
        now = show(box, "MainPID", "NRestarts", "ActiveState")
        fresh = now["MainPID"] not in ("0", before["MainPID"]) and now["ActiveState"] == "active"
        return now if fresh else None

    after = wait_for("a new main process started by systemd", restarted, 10 + 10 + 20)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    messages = [str(e.get("MESSAGE")) for e in journal(box, since=mark)]
    assert any("Watchdog timeout" in m for m in messages), messages
    assert any("Failed with result 'watchdog'" in m for m in messages), messages
    drop_in(box, "watchdog.conf", None)
    daemon_reload_and_restart(box)


def test_stop_during_a_cycle_ends_within_the_bound(box: SystemdBox, cluster: SimCluster) -> None:
    for i in range(len(cluster.addresses)):
        cluster.slow(i, 8)  # every request now waits out the 3 s read timeout
    try:
        mark = now_usec()
        cluster.reset_stats()
        box.must(["systemctl", "reload", UNIT])  # a cycle follows a reload at once
        wait_for(
            "a cycle in flight",
            lambda: any(s["requests"] for s in cluster.stats()["servers"]),
            20,
        )
        started = time.monotonic()
        box.must(["systemctl", "stop", UNIT], timeout=60)
        elapsed = time.monotonic() - started
    finally:
        for i in range(len(cluster.addresses)):
            cluster.slow(i, 0)
    state = show(box, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    # systemd's own lines: the process ended by itself, no stop timeout, no SIGKILL.
    entries = journal(box, since=mark)
    messages = [str(e.get("MESSAGE")) for e in entries if e.get("_TRANSPORT") != "stdout"]
    assert not [m for m in messages if "timed out" in m or "Killing" in m], messages
    assert elapsed < STOP_BOUND_S, f"systemctl stop took {elapsed:.1f} s"
    assert "stopped" in events(journal(box, since=mark))
    box.must(["systemctl", "start", UNIT], timeout=150)


def test_the_journal_has_one_line_per_event_at_its_priority_and_no_secret(
    box: SystemdBox, cluster: SimCluster
) -> None:
    # The token becomes required, then unknown: the daemon is refused and logs errors.
    acl = {"default_policy": "deny", "anonymous": {"node_prefix": {"": "read"}}}
    cluster.set_acl(
        {**acl, "tokens": {SECRET: {"node_prefix": {"": "write"}, "service_prefix": {"": "write"}}}}
    )
    wait_for_cycles(box)
    mark = now_usec()
    cluster.set_acl({**acl, "tokens": {"someone-else": {"node_prefix": {"": "write"}}}})
    wait_for("refused", lambda: status_text(box).startswith("Consul refused a request"), 30)
    cluster.set_acl(None)
    wait_for("in sync", lambda: status_text(box).startswith("in sync: "), 30)
    assert "sync_failed" in events(journal(box, since=mark))

    entries = daemon_lines(journal(box))
    # The command's own error lines (the invalid configuration at start, earlier): text for a
    # person, at error priority. Everything else: one JSON object per journal entry, never a
    # line of a traceback or a warning on its own.
    text = [e for e in entries if not str(e["MESSAGE"]).startswith("{")]
    assert [e["MESSAGE"] for e in text] == [
        "regagent: invalid configuration:",
        f"  {BROKEN}: sync.interval: 'soon' is not a duration (use e.g. 30s, 5m, 72h)",
    ]
    assert {e["PRIORITY"] for e in text} == {PRIORITY["error"]}
    lines = [e for e in entries if e not in text]
    assert len(lines) > 20
    levels = set()
    for entry in lines:
        record = json.loads(entry["MESSAGE"])
        assert record.get("event"), record
        assert entry["PRIORITY"] == PRIORITY[record["level"]], entry
        levels.add(record["level"])
    assert {"info", "warning", "error"} <= levels, levels
    shown = [e for e in daemon_lines(journal(box, "-p", "warning")) if e["MESSAGE"][0] == "{"]
    assert shown and {json.loads(e["MESSAGE"])["level"] for e in shown} <= {"warning", "error"}
    assert len(shown) < len(lines)

    everything = box.must(["journalctl", "--no-pager", "-o", "export"], timeout=60)
    assert SECRET not in everything
    assert SECRET not in box.must(["systemctl", "show", UNIT])


def test_what_the_sandbox_costs_measured_with_drop_ins(
    box: SystemdBox, cluster: SimCluster
) -> None:
    # ProtectHome=yes: a token file under /root is invisible to the daemon; a reload naming one
    # is rejected and the old configuration stays.
    box.write("/root/consul.token", f"{SECRET}\n", mode="0640")
    box.must(["chgrp", "regagent", "/root/consul.token"])
    box.write(SITE, site_config(cluster, box).replace(TOKEN_FILE, "/root/consul.token"))
    box.must(["systemctl", "reload", UNIT])
    wait_for("a token under /root rejected", lambda: "reload rejected" in status_text(box), 30)
    box.write(SITE, site_config(cluster, box))
    box.must(["rm", "/root/consul.token"])
    box.must(["systemctl", "reload", UNIT])
    wait_for("reload accepted", lambda: "rejected" not in status_text(box), 30)

    # Without AF_NETLINK, discovery falls back to /proc/net/tcp{,6}, says so, and still works.
    mark = now_usec()
    drop_in(
        box,
        "no-netlink.conf",
        "[Service]\nRestrictAddressFamilies=\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
    )
    daemon_reload_and_restart(box)
    wait_for_cycles(box)
    assert "listener_netlink_unavailable" in events(journal(box, since=mark))
    assert "node-exporter-19100" in registered(cluster)
    drop_in(box, "no-netlink.conf", None)

    # ProcSubset=pid (left out on purpose): /proc/stat is hidden. The daemon syncs, but
    # prometheus-client's process collector goes silent: process_start_time_seconds, which the
    # restart alert reads, is gone. (psutil, imported only when a process must be named, is
    # not imported here; when it was imported at start it printed a traceback.)
    mark = now_usec()
    drop_in(box, "procsubset.conf", "[Service]\nProcSubset=pid\n")
    daemon_reload_and_restart(box)
    wait_for_cycles(box)
    lines = [str(e.get("MESSAGE")) for e in journal(box, since=mark)]
    assert not [line for line in lines if line.startswith("Traceback")], lines
    assert "process_start_time_seconds" not in metrics(box)
    assert "node-exporter-19100" in registered(cluster)
    drop_in(box, "procsubset.conf", None)
    daemon_reload_and_restart(box)
    assert "process_start_time_seconds" in metrics(box)

    # README's network fence (IPAddressDeny=any plus an allow list) is enforced here: with the
    # servers' network allowed the daemon syncs, with only localhost it reaches no server.
    fence = "[Service]\nIPAddressDeny=any\nIPAddressAllow=localhost {}\n"
    drop_in(box, "fence.conf", fence.format(f"{box.address}/{box.prefix}"))
    daemon_reload_and_restart(box)
    wait_for_cycles(box)
    drop_in(box, "fence.conf", fence.format(""))
    daemon_reload_and_restart(box)
    assert status_text(box) == f"no Consul server reachable ({len(cluster.addresses)} tried)"
    drop_in(box, "fence.conf", None)
    daemon_reload_and_restart(box)
    wait_for("in sync", lambda: status_text(box).startswith("in sync: "), 30)


def test_upgrade_keeps_conffiles_and_state_and_restarts_once(
    box: SystemdBox, cluster: SimCluster, debs: Debs
) -> None:
    box.must(["sh", "-c", f"echo '# changed by the operator' >> {SHIPPED}"])
    conffile = box.read(SHIPPED)
    site = box.read(SITE)
    state = json.loads(box.read("/var/lib/regagent/discovered.json"))
    pid = main_pid(box)
    mark = now_usec()

    apt(box, "install", f"./regagent_{debs.following}_all.deb", cwd=str(debs.directory))

    installed = box.must(["dpkg-query", "-W", "-f", "${Version}", "regagent"])
    assert installed == debs.following
    assert box.read(SHIPPED) == conffile and box.read(SITE) == site
    entries = journal(box, since=mark)
    assert [e for e in entries if e.get("MESSAGE_ID") == UNIT_STARTED].__len__() == 1, entries
    assert events(entries).count("started") == 1
    assert events(entries).count("stopped") == 1
    assert main_pid(box) != pid and show(box, "ActiveState")["ActiveState"] == "active"
    wait_for(
        "the new version serving",
        lambda: f'version="{debs.following}"' in metrics(box),
        30,
    )
    wait_for_cycles(box)
    kept = json.loads(box.read("/var/lib/regagent/discovered.json"))["services"]
    for service_id, before in state["services"].items():
        assert kept[service_id]["first_seen"] == before["first_seen"], service_id
    assert "node-exporter-9100" in registered(cluster)


def test_remove_stops_it_and_keeps_the_configuration(box: SystemdBox, cluster: SimCluster) -> None:
    apt(box, "remove", "regagent")
    assert box.must(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "regagent"]).strip() == "rc"
    assert show(box, "ActiveState")["ActiveState"] == "inactive"
    assert box.run(["pgrep", "-u", "regagent"]).returncode == 1, "a regagent process is left"
    for path in (SHIPPED, SITE, TOKEN_FILE, "/var/lib/regagent/discovered.json"):
        assert box.run(["test", "-e", path]).returncode == 0, f"{path} removed"
    # Stopping does not deregister (a reboot must not make targets vanish).
    assert "node-exporter-9100" in registered(cluster)


def test_purge_removes_what_the_readme_says(box: SystemdBox) -> None:
    out = apt(box, "purge", "regagent")
    assert box.run(["dpkg-query", "-W", "regagent"]).stdout.strip() in ("", "regagent\t")
    gone = [
        SHIPPED,
        "/var/lib/regagent",
        "/etc/systemd/system/multi-user.target.wants/regagent.service",
        "/lib/systemd/system/regagent.service",
        "/usr/bin/regagent",
    ]
    left = [p for p in gone if box.run(["test", "-e", p]).returncode == 0]
    assert not left, f"left after purge: {left}"
    # What README says stays: files the operator added (dpkg says it could not remove their
    # directory), the system user and group, and the libraries apt installed.
    for path in (SITE, TOKEN_FILE):
        assert box.run(["test", "-e", path]).returncode == 0, path
    assert "/etc/regagent" in out and "not empty" in out, out
    assert box.run(["getent", "passwd", "regagent"]).returncode == 0
    assert box.run(["getent", "group", "regagent"]).returncode == 0
    status = box.must(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "python3-structlog"])
    assert status.startswith("ii"), status
