"""A real systemd as PID 1 for tests: Debian 12 booted under systemd-nspawn.

The package is meant to run under systemd, and this machine's PID 1 is not systemd; a container
whose PID 1 is Debian 12's own systemd is the closest thing to a real host that boots in about a
second. How, and why each piece is there:

- The root file system (debootstrap minbase plus systemd, dbus, python3) is built once from the
  machine's Debian mirror and cached under /var/tmp; every box boots it with
  `--volatile=overlay` (writes go to a tmpfs over it), so the cache never changes and nothing
  has to be copied or deleted per run.
- There is no systemd on the host to ask for a scope (`--register=no --keep-unit`), so nspawn
  is started in cgroups of its own (else it would put `supervisor/` and `payload/` at the
  host's cgroup root), removed again after power-off.
- A pure cgroup2 hierarchy in the container (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) and `bpf()`
  allowed: without both, systemd in the container silently ignores IPAddressDeny= and
  DevicePolicy=. Cgroup resource limits (MemoryMax=, CPUQuota=) are not enforced either way:
  the host binds those controllers elsewhere.
- Network: the container's own namespace with one veth pair (nspawn's `--network-veth`), a /30
  from 198.18.0.0/15 (RFC 2544's range for test networks) between `ve-<name>` on the host and
  `host0` inside. Services the test runs on the host (the Consul emulator) bind the host end;
  the container sees nothing else of the host, so discovery inside finds only what the test
  started there. The container has no route out: `run(..., host_network=True)` enters all its
  namespaces but the network one, which is how apt-get inside reaches the Debian mirror.
- Commands enter the container with `nsenter` (no machined here, so no `machinectl shell`);
  `systemd-run` inside runs one under the container's PID 1.

Every wait is bounded; `close()` powers the container off by its pid (SIGTERM to nspawn, which
makes systemd shut down cleanly; SIGKILL after a bound) and removes its cgroups. A test process
that dies without `close()` still powers it off: nspawn runs with SIGTERM as its parent-death
signal, and the next box removes the cgroups left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

CACHE = Path(os.environ.get("REGAGENT_BOX_CACHE", "/var/tmp/regagent-systemd-box"))
SUITE = "bookworm"
# The smallest Debian 12 that boots systemd, answers systemd-analyze security (dbus) and runs
# python3; what the package needs besides comes from the mirror when the test installs it.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "procps", "iproute2")
TEST_NET = ipaddress.IPv4Network("198.18.0.0/15")
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "TERM": "dumb",
}


class BoxUnavailable(Exception):
    """This machine cannot run the box at all (not root, no usable cgroup file system)."""


class BoxError(Exception):
    """The box failed to build, boot or answer; the message says where to look."""


def unavailable_reason() -> Optional[str]:
    """Why systemd-nspawn cannot run here, or None. Missing programs are not a reason: CI
    installs them (packaging/debian-deps), and a test that needs them must fail without them."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if not cgroup_parents():
        return "no writable cgroup file system at /sys/fs/cgroup (inside a container?)"
    return None


def cgroup_parents() -> List[Path]:
    """The hierarchies the box's own cgroups go into: the named systemd v1 hierarchy and the
    cgroup2 one on a hybrid host, or the single cgroup2 root."""
    root = Path("/sys/fs/cgroup")
    hybrid = [root / "systemd", root / "unified"]
    if all((p / "cgroup.procs").exists() for p in hybrid):
        candidates = hybrid
    elif (root / "cgroup.controllers").exists():
        candidates = [root]
    else:
        return []
    return candidates if all(os.access(p, os.W_OK) for p in candidates) else []


def debian_mirror() -> str:
    """The mirror this machine's apt uses (deb822 or one-line sources), for debootstrap."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        match = re.search(r"^URIs:\s*(\S+)", path.read_text(encoding="utf-8"), re.M)
        if match and "debian" in match.group(1):
            return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", legacy.read_text(), re.M)
        if match:
            return match.group(1)
    raise BoxError("no Debian mirror in /etc/apt: debootstrap needs one")


def _run(
    args: Sequence[str],
    timeout: float,
    input: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
        env=env,
    )


def cached_root() -> Path:
    """The Debian 12 root file system, built on first use (about a minute) and kept under
    /var/tmp. The name carries a hash of what it contains, so a changed list builds anew."""
    tag = hashlib.sha256(" ".join((SUITE, *INCLUDE)).encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{tag}"
    if (root / ".regagent-box-ok").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same root
        if (root / ".regagent-box-ok").exists():
            return root
        partial = CACHE / f"{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        mirror = debian_mirror()
        result = _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(partial),
                mirror,
            ],
            timeout=1200,
        )
        if result.returncode != 0:
            raise BoxError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}")
        _finish_root(partial)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / ".regagent-box-ok").touch()
    return root


def _finish_root(root: Path) -> None:
    """What a booted container needs beyond debootstrap's result."""
    (root / "etc/hostname").write_text("regagent-box\n")
    # The container's apt uses the host's client settings (e.g. a snapshot mirror's
    # Check-Valid-Until), as a new machine of this kind would be given them.
    for conf in Path("/etc/apt/apt.conf.d").glob("99*"):
        if conf.is_file():
            shutil.copy(conf, root / "etc/apt/apt.conf.d" / conf.name)
    _run(["chroot", str(root), "apt-get", "clean"], timeout=60)


def _children(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    yield int(entry.name)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 198.18.0.0/15 no address on this host is in (one per box, chosen by pid)."""
    used = _run(["ip", "-o", "addr", "show"], timeout=10).stdout
    taken = {ipaddress.ip_interface(a).network for a in re.findall(r"inet (\S+)", used)}
    subnets: List[ipaddress.IPv4Network] = list(TEST_NET.subnets(new_prefix=30))
    start = os.getpid() % len(subnets)
    for offset in range(len(subnets)):
        net = subnets[(start + offset) % len(subnets)]
        if not any(net.overlaps(t) for t in taken):
            return net
    raise BoxError("no free /30 in 198.18.0.0/15")


class SystemdBox:
    """One booted container: `run` a command inside, `systemctl`, `close` to power it off."""

    def __init__(self, root: Path, binds: Sequence[Path] = (), boot_timeout: float = 90) -> None:
        self.root = root
        # Short: nspawn names the host's end of the veth `ve-<name>`, at most 15 characters.
        self.name = f"ra{os.getpid()}"
        self.binds = list(binds)
        self.boot_timeout = boot_timeout
        self.log_path = CACHE / f"regagent-box-{os.getpid()}.log"
        self.cgroups = [parent / f"regagent-box-{os.getpid()}" for parent in cgroup_parents()]
        net = free_subnet()
        host, inside = list(net.hosts())
        self.host_address, self.address = str(host), str(inside)
        self.prefix = net.prefixlen
        self.nspawn: Optional[subprocess.Popen[bytes]] = None
        self.init_pid = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def boot(self) -> SystemdBox:
        """Start the container and wait, bounded, until its systemd reports running."""
        _remove_stale_cgroups()
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)
            cgroup.mkdir()
        join = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in self.cgroups)
        nspawn = [
            # If the test process dies without close(), nspawn gets SIGTERM: a clean power-off.
            "setpriv",
            "--pdeathsig=TERM",
            "--",
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--network-veth",
            "--resolv-conf=copy-host",
            "--system-call-filter=bpf",
            "--console=pipe",
            *(f"--bind-ro={path}" for path in self.binds),
        ]
        env = {**ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.log_path.open("wb") as log:
            # Own cgroups first, then exec: nspawn's payload/ and supervisor/ land below them.
            self.nspawn = subprocess.Popen(
                ["sh", "-c", f'{join}; exec "$@"', "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_for_boot()
            self._configure_network()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_boot(self) -> None:
        assert self.nspawn is not None
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise BoxError(f"systemd-nspawn exited ({self.nspawn.returncode}): {self.log()}")
            if not self.init_pid:
                self.init_pid = next(
                    (p for p in _children(self.nspawn.pid) if _comm(p) == "systemd"), 0
                )
            if self.init_pid:
                state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise BoxError(
            f"the container did not boot within {self.boot_timeout}s ({state!r}): {self.log()}"
        )

    def _configure_network(self) -> None:
        veth = f"ve-{self.name}"
        for args in (
            ["ip", "addr", "add", f"{self.host_address}/{self.prefix}", "dev", veth],
            ["ip", "link", "set", veth, "up"],
        ):
            result = _run(args, timeout=10)
            if result.returncode != 0:
                raise BoxError(f"{' '.join(args)}: {result.stderr.strip()}")
        self.must(["ip", "addr", "add", f"{self.address}/{self.prefix}", "dev", "host0"])
        self.must(["ip", "link", "set", "host0", "up"])

    def close(self) -> None:
        """Power off (SIGTERM to nspawn = a clean shutdown inside), SIGKILL after 30 s; then
        remove the cgroups. Safe to call twice."""
        proc, self.nspawn = self.nspawn, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.init_pid and _comm(self.init_pid) == "systemd":
                    os.kill(self.init_pid, signal.SIGKILL)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SystemdBox:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        """The tail of nspawn's own output (the container's console)."""
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    # -- commands ----------------------------------------------------------------------------

    def run(
        self,
        args: Sequence[str],
        timeout: float = 120,
        *,
        host_network: bool = False,
        input: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """`args` inside the container, as root, in all its namespaces (with `host_network`,
        all but the network one: the container's files and systemd, the host's routes)."""
        if not self.init_pid:
            raise BoxError("the container is not running")
        # -r -w: the init's own root, not its mount namespace's. They differ where nspawn itself
        # ran in a chroot (a CI chroot such as fresh-ci): there the namespace's root is the host's.
        spaces = ["-m", "-u", "-i", "-p", "-C"] if host_network else ["-a"]
        spaces += ["-r", "-w"]
        return _run(
            ["nsenter", "-t", str(self.init_pid), *spaces, "--", *args],
            timeout=timeout,
            input=input,
            env={**ENV, **(env or {})},
        )

    def must(
        self,
        args: Sequence[str],
        timeout: float = 120,
        *,
        host_network: bool = False,
        input: Optional[str] = None,
    ) -> str:
        """`run`, raising BoxError unless it succeeds; its stdout."""
        result = self.run(args, timeout, host_network=host_network, input=input)
        if result.returncode != 0:
            raise BoxError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """A root-owned file inside the container."""
        self.must(["install", "-m", mode, "/dev/stdin", path], input=text)

    def read(self, path: str) -> str:
        return self.must(["cat", path])

    def show(self, unit: str, *properties: str) -> Dict[str, str]:
        """`systemctl show` properties of a unit."""
        out = self.must(["systemctl", "show", unit, *(f"--property={p}" for p in properties)])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _remove_stale_cgroups() -> None:
    """Cgroups (and logs) of boxes whose test process died without close(), its container
    powered off by the death signal: named for a pid that is gone."""
    for parent in cgroup_parents():
        for path in parent.glob("regagent-box-*"):
            pid = path.name.rsplit("-", 1)[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _remove_cgroup(path)
    for log in CACHE.glob("regagent-box-*.log"):
        pid = log.stem.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.unlink(missing_ok=True)


def _remove_cgroup(path: Path) -> None:
    """A cgroup and its children, deepest first (rmdir is how cgroups are removed)."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
