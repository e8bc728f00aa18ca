"""Debian 12's Prometheus exporter packages, started the way an operator starts them, inside a
network namespace made for the purpose.

"The way an operator starts them" is read from the packages themselves at run time: the
systemd unit's `ExecStart`, `User`/`Group`, `Environment` and `EnvironmentFile`
(`/etc/default/<package>`, its `ARGS`), so each exporter runs as its unit would run it, with its
default listen address. systemd is not needed: the unit is interpreted here and the program
exec'd through `ip netns exec` and `setpriv`. The only additions are those a unit's own comments
ask the operator for (`OPERATOR_ENV`: a DSN for mysqld_exporter and postgres_exporter).

The namespace has `lo` and one end of a veth pair; the other end stays in the host's namespace
with an address from 198.18.0.0/15 (RFC 2544, benchmarking; never routed), so a Consul emulator
bound there is reachable from inside while every default port (9100, 9187 ...) stays clear of
whatever this host runs itself. Every process is started with Popen (`ip netns exec` and
`setpriv` both exec, so the Popen pid is the exporter's) and stopped by that pid; every wait is
bounded; the namespace and the veth pair are deleted on exit.

`EXPECTED` holds what was measured with Debian 12's packages (issue 24): which exporters listen
with their defaults, on which port, and the name and version regagent should report. A version
is given as a rule on the installed package's version, so a Debian rebuild does not break it.

    python3 tests/real_exporters.py [--keep SECONDS]    starts them all, prints what listens
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, Iterator, List, Mapping, Optional, Tuple

# `apt-cache search --names-only '^prometheus-.*-exporter$'` on Debian 12 (bookworm).
PACKAGES: Tuple[str, ...] = (
    "prometheus-apache-exporter",
    "prometheus-bind-exporter",
    "prometheus-bird-exporter",
    "prometheus-blackbox-exporter",
    "prometheus-elasticsearch-exporter",
    "prometheus-exporter-exporter",
    "prometheus-frr-exporter",
    "prometheus-hacluster-exporter",
    "prometheus-haproxy-exporter",
    "prometheus-homeplug-exporter",
    "prometheus-ipmi-exporter",
    "prometheus-libvirt-exporter",
    "prometheus-mongodb-exporter",
    "prometheus-mqtt-exporter",
    "prometheus-mysqld-exporter",
    "prometheus-nextcloud-exporter",
    "prometheus-nginx-exporter",
    "prometheus-node-exporter",
    "prometheus-openstack-exporter",
    "prometheus-pgbouncer-exporter",
    "prometheus-postfix-exporter",
    "prometheus-postgres-exporter",
    "prometheus-process-exporter",
    "prometheus-redis-exporter",
    "prometheus-snmp-exporter",
    "prometheus-sql-exporter",
    "prometheus-squid-exporter",
    "prometheus-tplink-plug-exporter",
    "prometheus-trafficserver-exporter",
    "prometheus-varnish-exporter",
)

# What the packages' own comments tell the operator to set (/etc/default/prometheus-*-exporter).
OPERATOR_ENV: Dict[str, Dict[str, str]] = {
    "prometheus-mysqld-exporter": {
        "DATA_SOURCE_NAME": "prometheus:nopassword@unix(/run/mysqld/mysqld.sock)/"
    },
    "prometheus-postgres-exporter": {
        "DATA_SOURCE_NAME": "user=prometheus host=/run/postgresql dbname=postgres"
    },
}

# systemd's environment for a service with User= set (systemd.exec(5), "Environment").
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
LISTEN_WAIT = 20.0  # seconds for the exporters expected to listen to do so (or exit)
STOP_WAIT = 5.0  # seconds after SIGTERM before SIGKILL
NET_PREFIX = "198.18"  # RFC 2544 benchmarking range
LOCK_FILE = "/run/lock/regagent-test-netns.lock"  # two harnesses must not pick one subnet


# How an exporter's version relates to its package's version.
UPSTREAM = "upstream"  # without the Debian revision: 1.10.3+ds-1+b6 -> 1.10.3+ds
DEBIAN = "debian"  # the whole package version (redis_exporter's build puts it in its version label)


@dataclass(frozen=True)
class Expected:
    """What one package does with its defaults, as measured on Debian 12."""

    package: str
    port: Optional[int]  # where it listens; None: it does not listen (see `absent`)
    exporter: Optional[str] = None  # the name `discover` should report
    version: Optional[str] = None  # UPSTREAM, DEBIAN, or None: it publishes no version of its own
    issue24: str = ""  # why regagent misses it (issue 24); empty: it does not
    absent: str = ""  # why it does not listen with its defaults
    # The evidence that names it (Meta identified_by): its build_info (the default), a table
    # fingerprint, or its process (its answer names nothing while its backend is down).
    identified_by: str = "build_info"
    # Its check after one sync: passing, or critical when its answer fails with its defaults.
    check: str = "passing"

    def expected_version(self) -> Optional[str]:
        if self.version is None:
            return None
        full = package_version(self.package)
        without_epoch = full.split(":", 1)[-1]
        return without_epoch if self.version == DEBIAN else without_epoch.rsplit("-", 1)[0]


EXPECTED: Tuple[Expected, ...] = (
    Expected("prometheus-apache-exporter", 9117, "apache_exporter", UPSTREAM),
    Expected("prometheus-bind-exporter", 9119, "bind_exporter", UPSTREAM),
    # 200 with an empty body while bird is not running: its process (run as user bird) names it.
    Expected("prometheus-bird-exporter", 9324, "bird_exporter", identified_by="process"),
    Expected("prometheus-blackbox-exporter", 9115, "blackbox_exporter", UPSTREAM),
    Expected("prometheus-elasticsearch-exporter", 9114, "elasticsearch_exporter", UPSTREAM),
    # An unprefixed build_info, whose HELP names exporter_exporter.
    Expected("prometheus-exporter-exporter", 9999, "exporter_exporter", UPSTREAM),
    Expected("prometheus-frr-exporter", 9342, "frr_exporter", UPSTREAM),
    Expected(
        "prometheus-hacluster-exporter",
        None,
        absent="exits: no collector can start without pacemaker/corosync/drbd tools",
    ),
    Expected("prometheus-haproxy-exporter", 9101, "haproxy_exporter", UPSTREAM),
    Expected("prometheus-homeplug-exporter", 9702, "homeplug_exporter", UPSTREAM),
    Expected("prometheus-ipmi-exporter", 9290, "ipmi_exporter", identified_by="fingerprint"),
    Expected("prometheus-libvirt-exporter", 9177, "libvirt_exporter", identified_by="fingerprint"),
    # /metrics takes 11-12 s while MongoDB is down: its process names it, and its check says
    # that a 10 s scrape fails.
    Expected(
        "prometheus-mongodb-exporter",
        9001,
        "mongodb_exporter",
        identified_by="process",
        check="critical",
    ),
    Expected(
        "prometheus-mqtt-exporter", None, absent="listens only once connected to an MQTT broker"
    ),
    Expected("prometheus-mysqld-exporter", 9104, "mysqld_exporter", UPSTREAM),
    # nextcloud_exporter_info{version=""}: the table's fingerprint, an empty version.
    Expected(
        "prometheus-nextcloud-exporter", 9205, "nextcloud_exporter", identified_by="fingerprint"
    ),
    Expected("prometheus-nginx-exporter", None, absent="exits: no nginx stub_status to read"),
    Expected("prometheus-node-exporter", 9100, "node_exporter", UPSTREAM),
    Expected(
        "prometheus-openstack-exporter",
        None,
        absent="its unit sources /usr/local/bin/observerenv.sh; the program is Python 2 code",
    ),
    Expected(
        "prometheus-pgbouncer-exporter", None, absent="exits: no pgbouncer socket to connect to"
    ),
    Expected("prometheus-postfix-exporter", None, absent="exits: no /var/log/mail.log"),
    Expected("prometheus-postgres-exporter", 9187, "postgres_exporter", UPSTREAM),
    Expected("prometheus-process-exporter", 9256, "process_exporter"),
    Expected("prometheus-redis-exporter", 9121, "redis_exporter", DEBIAN),
    Expected("prometheus-snmp-exporter", 9116, "snmp_exporter", UPSTREAM),
    Expected(
        "prometheus-sql-exporter",
        None,
        absent="exits: /etc/prometheus-sql-exporter.yml is not shipped (its unit's condition)",
    ),
    Expected("prometheus-squid-exporter", 9301, "squid_exporter", UPSTREAM),
    # Only Go runtime metrics on /metrics until a plug is asked for: its process names it.
    Expected(
        "prometheus-tplink-plug-exporter", 9233, "tplink_plug_exporter", identified_by="process"
    ),
    Expected(
        "prometheus-trafficserver-exporter",
        None,
        absent="ships no systemd unit; run by hand it exits when Traffic Server does not answer",
    ),
    # Only Varnish's own version (varnish_version, 7.1.1) is served: not the exporter's.
    Expected("prometheus-varnish-exporter", 9131, "varnish_exporter", identified_by="fingerprint"),
)
LISTENING: Tuple[Expected, ...] = tuple(e for e in EXPECTED if e.port is not None)


@dataclass(frozen=True)
class Launch:
    """How the package's unit starts its program."""

    package: str
    unit: str
    argv: Tuple[str, ...]
    user: str
    group: str
    env: Mapping[str, str]


@dataclass
class Running:
    """One started exporter: its process, its log and the ports its namespace shows it holds."""

    launch: Launch
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    ports: List[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 300) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace").strip()[-limit:]


class HarnessError(RuntimeError):
    """The namespace or an exporter could not be set up (says what to install or fix)."""


# ----------------------------------------------------------------------------- packages


def installed(package: str) -> bool:
    """Whether dpkg has the package installed (not just known)."""
    shown = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return shown.returncode == 0 and shown.stdout.endswith(" installed")


def package_version(package: str) -> str:
    shown = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return shown.stdout.strip()


def missing_packages(packages: Tuple[str, ...] = PACKAGES) -> List[str]:
    return [package for package in packages if not installed(package)]


def skip_reason(packages: Tuple[str, ...] = PACKAGES) -> str:
    """Why the real-exporter tests cannot run here, or "" when they can (some packages may be
    missing: `missing_packages` says which; a test of one of them skips on its own)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, exporters run as their units' users)"
    for tool in ("ip", "setpriv", "dpkg-query"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    if len(missing_packages(packages)) == len(packages):
        return "no Debian exporter package installed: apt-get install " + " ".join(packages)
    return ""


def unit_path(package: str) -> Optional[Path]:
    """The package's systemd service file, from its own file list."""
    listed = subprocess.run(
        ["dpkg-query", "-L", package], capture_output=True, text=True, check=False, timeout=30
    )
    units = [line for line in listed.stdout.splitlines() if line.endswith(".service")]
    for name in sorted(units, key=lambda path: Path(path).name != f"{package}.service"):
        for directory in UNIT_DIRS:  # an administrator's copy in /etc wins, as for systemd
            candidate = Path(directory) / Path(name).name
            if candidate.is_file():
                return candidate
    return None


def parse_unit(text: str) -> Dict[str, List[str]]:
    """The [Service] section's assignments, each key with its values in order."""
    section = ""
    values: Dict[str, List[str]] = {}
    joined = re.sub(r"\\\n", " ", text)
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def parse_environment_file(text: str) -> Dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile (quotes removed, comments skipped)."""
    env: Dict[str, str] = {}
    joined = re.sub(r"\\\n", "", text)
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().split("=", 1)[1].strip().startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value)
        env[key.strip()] = value
    return env


def _environment_assignments(value: str) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for word in shlex.split(value):
        if "=" in word:
            key, item = word.split("=", 1)
            env[key] = item
    return env


def expand_exec(command: str, env: Mapping[str, str]) -> List[str]:
    """systemd's ExecStart word splitting: `$VAR` alone is split on blanks, `${VAR}` is one word."""
    command = command.lstrip("-@:+!")
    argv: List[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv += env.get(whole.group(1), "").split()
            continue
        argv.append(
            re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
        )
    return argv


def launch_of(package: str) -> Launch:
    """How the package's unit would start it, with OPERATOR_ENV added."""
    unit = unit_path(package)
    if unit is None:
        raise HarnessError(f"{package} ships no systemd unit: no default way to start it")
    service = parse_unit(unit.read_text(encoding="utf-8"))
    env: Dict[str, str] = {}
    for value in service.get("Environment", []):
        env.update(_environment_assignments(value))
    for value in service.get("EnvironmentFile", []):
        optional = value.startswith("-")
        path = Path(value.lstrip("-"))
        if path.is_file():
            env.update(parse_environment_file(path.read_text(encoding="utf-8")))
        elif not optional:
            raise HarnessError(f"{package}: {unit.name} needs {path}, which is missing")
    env.update(OPERATOR_ENV.get(package, {}))
    user = (service.get("User") or ["root"])[-1]
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise HarnessError(f"{package}: user {user} of {unit.name} does not exist") from None
    group = (service.get("Group") or [""])[-1] or str(account.pw_gid)
    commands = service.get("ExecStart") or []
    if not commands:
        raise HarnessError(f"{package}: {unit.name} has no ExecStart")
    argv = expand_exec(commands[-1], env)
    base = {
        "PATH": SERVICE_PATH,
        "LANG": "C.UTF-8",
        "HOME": account.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "SHELL": account.pw_shell,
    }
    return Launch(package, unit.name, tuple(argv), user, group, {**base, **env})


# ----------------------------------------------------------------------------- namespace


class Namespace:
    """A network namespace with `lo` up and a veth pair to the host's namespace.

    `host_ip` is the host's end (bind an emulator there), `inner_ip` the namespace's (what
    regagent's `node.address: auto` finds inside).
    """

    def __init__(self, tag: str = "") -> None:
        tag = tag or str(os.getpid() % 100000)
        self.name = f"regagent-exp-{tag}"
        self.host_if = f"rgx{tag}h"[:15]
        self.inner_if = f"rgx{tag}n"[:15]
        self.host_ip = ""
        self.inner_ip = ""

    def create(self) -> Namespace:
        Path(LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
            return self._create()

    def _create(self) -> Namespace:
        subnet = _free_subnet()
        self.host_ip, self.inner_ip = f"{subnet}.1", f"{subnet}.2"
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if],
            ["ip", "link", "set", self.inner_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if],
            ["ip", "-n", self.name, "link", "set", self.inner_if, "up"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=30)
            if done.returncode != 0:
                self.delete()
                raise HarnessError(f"{' '.join(step)}: {done.stderr.strip()}")
        return self

    def delete(self) -> None:
        """Removes the veth pair and the namespace; safe to call twice."""
        for step in (["ip", "link", "del", self.host_if], ["ip", "netns", "del", self.name]):
            subprocess.run(step, capture_output=True, check=False, timeout=30)

    def argv(self, *argv: str) -> List[str]:
        """`argv` run inside the namespace (ip exec's it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]


def _free_subnet() -> str:
    """A 198.18.N /30 no interface of this host uses yet (N from the pid, then the next)."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False, timeout=30
    )
    used = set(re.findall(rf"inet {re.escape(NET_PREFIX)}\.(\d+)\.", shown.stdout))
    first = os.getpid() % 250
    for step in range(250):
        third = str((first + step) % 250 + 1)
        if third not in used:
            return f"{NET_PREFIX}.{third}"
    raise HarnessError(f"no free {NET_PREFIX}.N.0/30 for the veth pair")


# ----------------------------------------------------------------------------- processes


def start(namespace: Namespace, launch: Launch) -> Running:
    """Starts one exporter in the namespace as its unit's user; its output goes to a temp file."""
    log = tempfile.TemporaryFile(prefix=f"{launch.package}-")  # noqa: SIM115  # closed in stop()
    as_user = [
        "setpriv",
        f"--reuid={launch.user}",
        f"--regid={launch.group}",
        "--init-groups" if launch.user != "root" else "--keep-groups",
    ]
    proc = subprocess.Popen(
        namespace.argv(*as_user, *launch.argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(launch.env),
        cwd="/",
        start_new_session=True,  # a terminal's ^C goes to the harness, which stops them by pid
    )
    return Running(launch, proc, log)


def stop(running: Running) -> None:
    """SIGTERM by pid, SIGKILL after STOP_WAIT; safe to call twice."""
    proc = running.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_WAIT)
    with contextlib.suppress(OSError, ValueError):
        running.log.close()


def listening_ports(pid: int) -> List[int]:
    """TCP ports `pid` listens on, read from its own namespace's /proc/<pid>/net/tcp{,6}."""
    inodes = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(entry.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def wait_listening(started: List[Running], deadline: float = LISTEN_WAIT) -> None:
    """Until every exporter expected to listen does, or has exited (bounded by `deadline`
    seconds), then 1 s more so that those expected not to listen have had their chance too."""
    expected = {e.package for e in LISTENING}
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for running in started:
            if running.proc.poll() is None:
                running.ports = listening_ports(running.pid)
        awaited = [r for r in started if r.launch.package in expected]
        if all(r.ports or r.proc.poll() is not None for r in awaited):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    for running in started:
        if running.proc.poll() is None:
            running.ports = listening_ports(running.pid)


@contextlib.contextmanager
def exporters_running(
    packages: Tuple[str, ...] = PACKAGES, tag: str = ""
) -> Iterator[Tuple[Namespace, List[Running], Dict[str, str]]]:
    """A namespace with every package's exporter started (those that can be); yields the
    namespace, the started exporters and, per package that could not be started, why.
    Everything is stopped by pid and the namespace deleted on exit, pass or fail."""
    namespace = Namespace(tag).create()
    started: List[Running] = []
    not_started: Dict[str, str] = {}
    try:
        for package in packages:
            if not installed(package):
                not_started[package] = f"not installed (apt-get install {package})"
                continue
            try:
                started.append(start(namespace, launch_of(package)))
            except HarnessError as exc:
                not_started[package] = str(exc)
        wait_listening(started)
        yield namespace, started, not_started
    finally:
        for running in started:
            stop(running)
        namespace.delete()


# ----------------------------------------------------------------------------- regagent


def write_config(path: Path, servers: List[str], **sections: object) -> Path:
    """A regagent config for a run inside the namespace: discovery probes bounded like a
    Prometheus scrape (10 s), no cap that would hold any of the exporters back."""
    config: Dict[str, object] = {
        "consul": {"servers": servers, "connect_timeout": "1s", "read_timeout": "5s"},
        "node": {"name": "real-exporters"},
        "sync": {"state_dir": str(path.parent / "state")},
        "discovery": {"probe_timeout": "10s", "max_new_per_cycle": 100},
        **sections,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    path.chmod(0o600)
    return path


def regagent(
    namespace: Namespace,
    config: Path,
    *args: str,
    timeout: float = 180,
    pythonpath: Optional[str] = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m regagent -c CONFIG ARGS` inside the namespace (bounded by `timeout`);
    `pythonpath`: another regagent's sources to run instead (a bench's "before")."""
    argv = namespace.argv(sys.executable, "-m", "regagent", "-c", str(config), *args)
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, default=0, help="seconds to keep them running")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        raise SystemExit(reason)
    with exporters_running() as (namespace, started, not_started):
        print(f"namespace {namespace.name}: inside {namespace.inner_ip}, host {namespace.host_ip}")
        for running in started:
            launch = running.launch
            state = (
                f"listens on {running.ports}"
                if running.ports
                else f"exited {running.proc.returncode}"
                if running.proc.poll() is not None
                else "runs, does not listen"
            )
            print(
                json.dumps(
                    {
                        "package": launch.package,
                        "pid": running.pid,
                        "user": launch.user,
                        "argv": launch.argv,
                        "state": state,
                        "log": "" if running.ports else running.log_tail(),
                    }
                )
            )
        for package, why in not_started.items():
            print(json.dumps({"package": package, "state": "not started", "log": why}))
        time.sleep(max(0.0, min(args.keep, 3600)))


if __name__ == "__main__":
    main()
