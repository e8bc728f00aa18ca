"""A local process is evidence, not authority: what it calls itself does not register it, and
however many ports it opens, at most `discovery.max_new_per_cycle` new exporters a cycle.

Before: an unprivileged process posing as `node_exporter` through argv[0] got every port it
opened registered (30 in the issue's test), each then critical for 72 h after it stopped.
Here the hostile party is played for real: a process run as user nobody through `setpriv`,
named node_exporter (argv[0] and comm, or an executable file of that name that nobody owns),
serving a real prometheus_client exposition with node_exporter's fingerprint on 30 ports.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from structlog.testing import capture_logs

from helpers.discovery import only, stop
from helpers.fakes import discovery_for, full_pass, reading_of
from helpers.ports import free_port
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.discovery.identify import NOT_CANDIDATE, discover
from regagent.discovery.listeners import listening_sockets_netlink
from regagent.discovery.processes import ProcessResolver, describe_process, executable_trusted

NODE = "192.0.2.10"
T0 = 1_800_000_000.0
PORTS = 30
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
    reason="needs root, setpriv and Debian's python3 (with python3-prometheus-client)",
)
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# The impostor: renames itself (comm) and serves node_exporter's fingerprint on every port.
IMPOSTOR = """
import ctypes, sys, time
from prometheus_client import CollectorRegistry, Gauge, start_http_server
ctypes.CDLL(None).prctl(15, b"node_exporter", 0, 0, 0)  # PR_SET_NAME
registry = CollectorRegistry()
info = Gauge("node_exporter_build_info", "x", ["version", "revision"], registry=registry)
info.labels(version="1.5.0", revision="fake").set(1)
Gauge("node_load1", "x", registry=registry).set(0.5)
for port in sys.argv[1:]:
    start_http_server(int(port), addr="0.0.0.0", registry=registry)
print("ready", flush=True)
time.sleep(120)
"""


class PortTaken(RuntimeError):
    """One of the ports picked free was taken before the impostor bound it (an outgoing
    connection's ephemeral port, say): pick others."""


def _wait_all_listening(ports: List[int], proc: subprocess.Popen[bytes]) -> None:
    """Until every port has a LISTEN socket (bounded: 400 x 25 ms)."""
    for _ in range(400):
        if proc.poll() is not None:
            error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if "Address already in use" in error:
                raise PortTaken(error.strip().splitlines()[-1])
            raise RuntimeError(f"impostor exited with {proc.returncode}: {error[-500:]}")
        listening = {lst.port for lst in listening_sockets_netlink()}
        if set(ports) <= listening:
            return
        time.sleep(0.025)
    raise RuntimeError("the impostor's ports never all listened")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="regagent-impostor-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _start(argv: List[str]) -> Tuple[subprocess.Popen[bytes], List[int]]:
    """The impostor on PORTS free ports; other ports (3 tries) if one was taken meanwhile."""
    for attempt in range(3):
        ports = sorted({free_port(addr="0.0.0.0") for _ in range(PORTS * 2)})[:PORTS]
        proc = subprocess.Popen(
            [*argv, *map(str, ports)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_all_listening(ports, proc)
        except PortTaken:
            _stop(proc)
            if attempt == 2:
                raise
            continue
        except BaseException:
            _stop(proc)
            raise
        return proc, ports
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stopped by its pid, its stderr pipe closed."""
    stop(proc)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(params=["argv0-and-comm", "own-executable"])
def impostor(request: pytest.FixtureRequest, private_dir: Path) -> Iterator[List[int]]:
    """30 ports served by user nobody's process that calls itself node_exporter, either
    through argv[0] and comm (exe: root's python3) or through an executable file of its own
    named node_exporter (a copy of python3 that nobody owns)."""
    if request.param == "argv0-and-comm":
        argv = [*SETPRIV, "bash", "-c", 'exec -a node_exporter /usr/bin/python3 -c "$@"']
        argv += ["bash", IMPOSTOR]
    else:
        program = private_dir / "node_exporter"
        shutil.copy("/usr/bin/python3", program)
        nobody = pwd.getpwnam("nobody")
        os.chown(program, nobody.pw_uid, nobody.pw_gid)
        argv = [*SETPRIV, str(program), "-c", IMPOSTOR]
    proc, ports = _start(argv)
    try:
        yield ports
    finally:
        _stop(proc)


@needs_root
def test_the_impostor_really_goes_by_node_exporter(impostor: List[int]) -> None:
    (listener,) = [lst for lst in listening_sockets_netlink() if lst.port == impostor[0]][:1]
    owner = ProcessResolver().resolve([listener.inode])[listener.inode]

    assert owner is not None
    assert "node_exporter" in owner.names  # what the old code took as proof
    assert owner.uid == pwd.getpwnam("nobody").pw_uid
    assert owner.trusted_names.isdisjoint({"node_exporter"})


@needs_root
def test_a_name_alone_registers_nothing(impostor: List[int], private_dir: Path) -> None:
    config = Config(sync=SyncConfig(state_dir=str(private_dir)))  # no port ranges
    discovery = discovery_for(config, reading_of(only(*impostor)))

    intents = full_pass(discovery, NODE, T0)

    assert intents == ()  # before: all 30 registered as node-exporter-<port>
    result = discover(config, list_listeners=only(*impostor))
    assert {f.outcome for f in result.findings} == {NOT_CANDIDATE}
    assert "process name 'node_exporter' is not evidence" in result.findings[0].reason


@needs_root
def test_configured_ranges_register_at_most_the_cap_per_cycle(
    impostor: List[int], private_dir: Path
) -> None:
    # The operator asked for these ports: evidence enough, but rate-limited.
    config = Config(
        discovery=DiscoveryConfig(port_ranges=tuple((p, p) for p in impostor)),
        sync=SyncConfig(state_dir=str(private_dir)),
    )
    discovery = discovery_for(config, reading_of(only(*impostor)))
    counts = []
    with capture_logs() as logs:
        for cycle in range(4):
            counts.append(len(full_pass(discovery, NODE, T0 + 30 * cycle)))

    assert counts == [10, 20, 30, 30]
    held = [e for e in logs if e["event"] == "exporter_not_registered"]
    assert len(held) == 20  # each held-back listener named once (discovery de-duplicates)
    assert {e["log_level"] for e in held} == {"warning"}
    assert "discovery.max_new_per_cycle (10)" in held[0]["reason"]


@needs_root
def test_a_root_owned_exporter_binary_is_still_found_by_name(private_dir: Path) -> None:
    # Debian's node_exporter, run as nobody: its executable is root's alone, so its name counts.
    binary = "/usr/bin/prometheus-node-exporter"
    if not os.path.exists(binary):
        pytest.skip("Debian's prometheus-node-exporter not installed")
    port = free_port(addr="0.0.0.0")
    argv = [*SETPRIV, binary, f"--web.listen-address=:{port}", "--collector.disable-defaults"]
    proc = subprocess.Popen(
        [*argv, "--collector.loadavg"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_all_listening([port], proc)
        config = Config(sync=SyncConfig(state_dir=str(private_dir)))
        (intent,) = full_pass(discovery_for(config, reading_of(only(port))), NODE, T0)
        assert intent.service.id == f"node-exporter-{port}"
        info = describe_process(proc.pid)
        assert info.exe_trusted and info.uid != 0
    finally:
        stop(proc)


def test_a_process_name_with_escapes_is_shown_printable() -> None:
    # comm is the process's own choice; `discover` prints it and the log carries it.
    script = (
        "import ctypes, time; "
        r"ctypes.CDLL(None).prctl(15, b'\x1b[2J\x1b[31mevil', 0, 0, 0); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(["/usr/bin/python3", "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        info = describe_process(proc.pid)
    finally:
        stop(proc)

    assert info.name == "evil"
    assert info.uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root-owned executable")
def test_a_root_owned_executable_is_recognised_when_its_path_comes_with_a_foreign_prefix(
    tmp_path: Path,
) -> None:
    """A process in another mount namespace or chroot (a container, `ip netns exec` inside
    a chroot, as CI runs) has an exe path the kernel gives with a prefix its own root lacks.
    Its directory is then the longest tail of that path that is the very file running; a tail
    that is another file, or a directory others may write, vouches for nothing."""
    safe = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        safe.chmod(0o755)
        program = safe / "prometheus-sleepy-exporter"
        shutil.copy2("/bin/sleep", program)
        program.chmod(0o755)
        proc = subprocess.Popen([str(program), "30"])
        try:
            foreign = f"/var/tmp/elsewhere/run.x{program}"
            assert executable_trusted(proc.pid, str(program))
            assert executable_trusted(proc.pid, foreign)
            # a tail that names another file (same name, another inode) is not the program
            decoy = tmp_path / "usr" / "bin"
            decoy.mkdir(parents=True)
            (decoy / program.name).write_bytes(b"")
            assert not executable_trusted(proc.pid, f"/var/tmp/elsewhere{decoy / program.name}")
            # the same program in a directory anyone may write vouches for nothing
            safe.chmod(0o777)
            assert not executable_trusted(proc.pid, foreign)
        finally:
            stop(proc)
    finally:
        shutil.rmtree(safe)
