"""The packages as an operator meets them: `packaging/build deb|rpm`, lintian and rpmlint, what
each package contains, and the Debian package installed on this machine with apt-get, run by
the system python as user regagent against the emulator, then purged.

This module installs and purges a package and creates the system user regagent: it needs root
on a throwaway machine (CI) and fails, rather than skips, anywhere else. Everything it installs
is purged in a `finally`; what stays afterwards is what README.md "Packages" documents.
"""

from __future__ import annotations

import ast
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Union

import pytest

import real_exporters
from consulsim import SimCluster

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "build"
DIST = REPO / "dist"
SYSTEM_PYTHON = "/usr/bin/python3"
DEB_SITE = "/usr/lib/python3/dist-packages"
RPM_SITE = "/usr/lib/python3.9/site-packages"
# Debian 12 packages the .deb must take its libraries from (never a vendored copy).
DEB_DEPENDS = (
    "python3-consul2",
    "python3-psutil",
    "python3-yaml",
    "python3-prometheus-client",
    "python3-structlog",
    "python3-requests",
    "python3-urllib3",
    "adduser",
)
# A clean environment: no virtualenv, no PYTHONPATH, no pyenv shims in front of /usr/bin.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
# Files the deb ships, besides the Python modules.
DEB_FILES = {
    "/usr/bin/regagent",
    "/lib/systemd/system/regagent.service",
    "/etc/regagent/conf.d/00-regagent.yaml",
    "/usr/share/man/man1/regagent.1.gz",
    "/usr/share/doc/regagent/copyright",
}
RPM_FILES = {
    "/usr/bin/regagent",
    "/usr/lib/systemd/system/regagent.service",
    "/usr/lib/sysusers.d/regagent.conf",
    "/etc/regagent/conf.d/00-regagent.yaml",
    "/usr/share/man/man1/regagent.1.gz",
    "/var/lib/regagent",
}


def version() -> str:
    """regagent.__version__, read from the source as packaging/build reads it."""
    tree = ast.parse((REPO / "agent" / "regagent" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError("no __version__ in agent/regagent/__init__.py")


def source_modules() -> Set[str]:
    """Every file of the regagent package that a package must ship, relative to site-packages."""
    root = REPO / "agent"
    return {
        str(path.relative_to(root))
        for path in (root / "regagent").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def run(
    args: List[str],
    timeout: float = 120,
    cwd: Union[str, Path, None] = None,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a command to completion; the caller checks the exit code."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )


def must(args: List[str], timeout: float = 120) -> str:
    result = run(args, timeout=timeout)
    assert result.returncode == 0, (
        f"{args} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def require_root() -> None:
    # CI runs as root on a throwaway machine; anywhere else this must fail loudly, not skip.
    assert os.geteuid() == 0, "tests/test_packaging.py installs packages: run it as root (CI)"


def build(kind: str) -> None:
    result = run([str(BUILD), kind], timeout=900)
    assert result.returncode == 0, f"packaging/build {kind} failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def deb(deb_package: Path) -> Path:
    """`packaging/build deb` (once per session, conftest): dist/regagent_<version>_all.deb."""
    require_root()
    path = DIST / f"regagent_{version()}_all.deb"
    assert deb_package == path, f"packaging/build deb wrote {deb_package}, not {path}"
    return path


@pytest.fixture(scope="module")
def rpm_package() -> Path:
    """`packaging/build rpm`, once per module: dist/regagent-<version>-1.noarch.rpm."""
    require_root()
    build("rpm")
    path = DIST / f"regagent-{version()}-1.noarch.rpm"
    assert path.is_file(), f"packaging/build rpm did not write {path}"
    return path


# ------------------------------------------------------- the one list of Debian packages

DEBIAN_DEPS = REPO / "packaging" / "debian-deps"
CONTROL = REPO / "packaging" / "deb" / "debian" / "control"


def control_field(text: str, stanza: int, name: str) -> List[str]:
    """The comma-separated entries of field `name` in the `stanza`-th stanza of a deb822 text
    (comment lines skipped, as dpkg does in debian/control)."""
    stanzas = re.split(r"\n\s*\n", "\n".join(line for line in text.splitlines() if line[:1] != "#"))
    match = re.search(rf"^{re.escape(name)}:(.*(?:\n[ \t].*)*)", stanzas[stanza], re.M)
    assert match, f"no {name} in stanza {stanza}"
    return [" ".join(e.split()) for e in match.group(1).split(",") if e.strip()]


def debian_deps(kind: str) -> List[str]:
    out = must([str(DEBIAN_DEPS), kind])
    return [entry.strip() for entry in out.split(",")]


def test_build_depends_hold_what_the_build_imports() -> None:
    """dh_auto_test imports the built modules on Debian's python3: a builder that starts from
    Build-Depends only (sbuild, a buildd) needs every library of the package's Depends."""
    text = CONTROL.read_text(encoding="utf-8")
    build = control_field(text, 0, "Build-Depends")
    depends = control_field(text, 1, "Depends")
    libraries = [d for d in depends if d.startswith("python3-")]
    assert len(libraries) >= 5, depends
    for library in libraries:
        assert f"{library} <!nocheck>" in build, f"{library} is not in Build-Depends"


def test_ci_and_the_build_install_from_the_one_list() -> None:
    build = debian_deps("build")
    test = debian_deps("test")
    declared = control_field(CONTROL.read_text(encoding="utf-8"), 0, "Build-Depends")
    assert build[: len(declared)] == declared
    assert "dpkg-dev" in build  # dpkg-buildpackage: the part of build-essential an all build runs
    assert test[: len(build)] == build  # @builddeps@
    for tool in ("systemd-container", "debootstrap", "python3-venv", "lintian", "nginx"):
        assert tool in test, tool
    # The real-exporter harness starts every Debian exporter package it knows; CI installs them
    # all, or its tests would skip on a new machine instead of running.
    assert set(real_exporters.PACKAGES) <= set(test), set(real_exporters.PACKAGES) - set(test)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "packaging/debian-deps --install test" in ci
    for script in (ci, BUILD.read_text(encoding="utf-8")):
        assert not re.search(r"apt-get\b[^\n]*\binstall\b", script), "a second, hand-kept list"


# ---------------------------------------------------------------------------------------- deb


def deb_paths(deb: Path) -> Set[str]:
    listing = must(["dpkg-deb", "--contents", str(deb)])
    return {line.split(None, 5)[5].lstrip(".").rstrip("/") for line in listing.splitlines()}


def test_deb_lintian_reports_no_errors(deb: Path) -> None:
    changes = next(DIST.glob(f"regagent_{version()}_*.changes"))
    result = run(["lintian", "--fail-on", "error", str(deb), str(changes)], timeout=300)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    print("lintian:", *tags, sep="\n  ")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [t for t in tags if t.startswith("E: ")], tags


def test_deb_ships_command_unit_conffile_and_modules(deb: Path) -> None:
    paths = deb_paths(deb)
    assert paths >= DEB_FILES, DEB_FILES - paths
    shipped = {p[len(DEB_SITE) + 1 :] for p in paths if p.startswith(f"{DEB_SITE}/regagent/")}
    assert shipped >= source_modules(), source_modules() - shipped
    assert "regagent/data/exporters.yaml" in shipped
    # Bytecode is compiled on the host at install (dh_python3's py3compile), never shipped.
    assert not [p for p in paths if p.endswith(".pyc") or "__pycache__" in p]
    assert not [p for p in paths if "/tests/" in p or "consulsim" in p]
    assert f"{DEB_SITE}/regagent-{version()}.dist-info/entry_points.txt" in paths
    info = must(["dpkg-deb", "--info", str(deb), "conffiles"])
    assert info.split() == ["/etc/regagent/conf.d/00-regagent.yaml"]


def test_deb_version_and_depends(deb: Path) -> None:
    fields = must(["dpkg-deb", "--field", str(deb), "Version", "Depends", "Architecture"])
    assert f"Version: {version()}\n" in fields
    assert "Architecture: all\n" in fields
    depends = fields.split("Depends:", 1)[1]
    for package in DEB_DEPENDS:
        assert re.search(rf"(^|[ ,]){re.escape(package)}( \(|,|$)", depends, re.M), package


def test_deb_unit_is_the_repository_unit(deb: Path, tmp_path: Path) -> None:
    must(["dpkg-deb", "--extract", str(deb), str(tmp_path)])
    shipped = (tmp_path / "lib/systemd/system/regagent.service").read_bytes()
    assert shipped == (REPO / "systemd/regagent.service").read_bytes()
    assert (tmp_path / "usr/bin/regagent").read_text().startswith(f"#!{SYSTEM_PYTHON}\n")


def test_deb_scripts_create_the_user_and_start_only_under_systemd(
    deb: Path, tmp_path: Path
) -> None:
    must(["dpkg-deb", "--control", str(deb), str(tmp_path)])
    postinst = (tmp_path / "postinst").read_text()
    assert "adduser --quiet --system --group --home /var/lib/regagent" in postinst
    # Every start, stop or daemon-reload that dh_installsystemd generated is guarded.
    for script in ("postinst", "prerm", "postrm"):
        text = (tmp_path / script).read_text()
        blocks = re.findall(
            r"# Automatically added by dh_installsystemd.*?# End automatically", text, re.S
        )
        for block in blocks:
            if re.search(r"deb-systemd-invoke|systemctl ", block):
                assert "[ -d /run/systemd/system ]" in block, f"{script}: unguarded\n{block}"
    postrm = (tmp_path / "postrm").read_text()
    assert "rm -rf /var/lib/regagent" in postrm
    assert "deluser" not in postrm  # the system user stays (README.md "Packages")


# ---------------------------------------------------------------------- deb, installed here


class HostState:
    """What this machine looked like before the install, to tell leftovers from prior state."""

    def __init__(self) -> None:
        self.etc_existed = Path("/etc/regagent").exists()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def dpkg_status(package: str) -> str:
    result = run(["dpkg-query", "--show", "--showformat=${db:Status-Abbrev}", package])
    return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[HostState]:
    """The deb installed with apt-get (pulling Debian's libraries); purged afterwards."""
    before = HostState()
    try:
        install = [*APT, "install", f"./{deb.relative_to(REPO)}"]
        result = run(install, timeout=600, cwd=REPO)
        if result.returncode != 0:  # stale package lists on a fresh machine: refresh once
            run([*APT, "update"], timeout=600)
            result = run(install, timeout=600, cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        yield before
    finally:
        if dpkg_status("regagent"):
            run([*APT, "purge", "regagent"], timeout=600)


def test_installed_command_runs_on_the_system_python(installed: HostState) -> None:
    result = run(["/usr/bin/regagent", "--version"], env=SYSTEM_ENV, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"regagent {version()}"
    result = run(["/usr/bin/regagent", "check-config"], env=SYSTEM_ENV, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "state_dir: /var/lib/regagent" in result.stdout
    # The libraries are Debian's, at Debian's versions, and regagent is the packaged one.
    probe = (
        "import consul, psutil, yaml, prometheus_client, structlog, regagent\n"
        "for m in (consul, psutil, yaml, prometheus_client, structlog, regagent):\n"
        "    print(m.__name__, m.__file__)\n"
    )
    out = must([SYSTEM_PYTHON, "-I", "-c", probe])
    for line in out.splitlines():
        name, path = line.split()
        assert path.startswith(f"{DEB_SITE}/"), f"{name} imported from {path}"
    for package in DEB_DEPENDS:
        assert dpkg_status(package).startswith("ii"), f"{package} is not installed"


def test_installed_user_and_state_directory(installed: HostState) -> None:
    user = pwd.getpwnam("regagent")
    assert user.pw_uid < 1000, "not a system user"
    assert user.pw_dir == "/var/lib/regagent"
    assert user.pw_shell == "/usr/sbin/nologin"
    state = os.stat("/var/lib/regagent")
    assert (state.st_uid, state.st_gid) == (user.pw_uid, user.pw_gid)
    assert stat.S_IMODE(state.st_mode) == 0o750
    # A conffile, root's, readable by the daemon.
    conf = os.stat("/etc/regagent/conf.d/00-regagent.yaml")
    assert (conf.st_uid, stat.S_IMODE(conf.st_mode)) == (0, 0o644)


def test_installed_unit_verifies_and_nothing_was_started(installed: HostState) -> None:
    result = run(["systemd-analyze", "verify", "/lib/systemd/system/regagent.service"])
    assert result.returncode == 0, result.stdout + result.stderr
    # Enabled for the next boot (deb-systemd-helper), not started: systemd is not PID 1 here.
    assert Path("/etc/systemd/system/multi-user.target.wants/regagent.service").is_symlink()
    if not Path("/run/systemd/system").exists():
        assert not _pids_of_user("regagent"), "the package started a daemon without systemd"


def _pids_of_user(name: str) -> List[int]:
    uid = pwd.getpwnam(name).pw_uid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


@pytest.fixture
def readable_config_dir() -> Iterator[Path]:
    """A config directory the regagent user can read (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="regagent-pkgtest-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_installed_daemon_registers_as_user_regagent(
    installed: HostState, readable_config_dir: Path
) -> None:
    seccomp = run([SYSTEM_PYTHON, "-c", "import seccomp"])
    assert seccomp.returncode == 0, "tests/sandbox_exec.py needs apt-get install python3-seccomp"
    node = f"regagent-pkgtest-{os.getpid()}"
    with SimCluster(servers=3, election_delay="0.3s", rpc_hold="0.2s") as cluster:
        port = cluster.host_port(0)[1]
        config = readable_config_dir / "10-test.yaml"
        config.write_text(
            "consul:\n"
            f"  servers: [{', '.join(cluster.addresses)}]\n"
            f"node:\n  name: {node}\n"
            "sync:\n  interval: 1s\n  jitter: 0s\n"
            # Discovery runs too (netlink, /proc under hidepid); the test asserts only on
            # the service it configured, in its own emulator.
            "services:\n"
            f"  - name: pkgtest\n    port: {port}\n    check: {{type: tcp}}\n",
            encoding="utf-8",
        )
        config.chmod(0o644)
        shutil.copy("/etc/regagent/conf.d/00-regagent.yaml", readable_config_dir)
        (readable_config_dir / "00-regagent.yaml").chmod(0o644)
        # As systemd would run it: the unit's user, capabilities, syscall filter, address
        # families and file system view, emulated by tests/sandbox_exec.py from the unit itself.
        proc = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(REPO / "tests" / "sandbox_exec.py"),
                "/lib/systemd/system/regagent.service",
                "--",
                "/usr/bin/regagent",
                "run",
                "-c",
                str(readable_config_dir),
            ],
            env=SYSTEM_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            registered = _wait_for_service(cluster, node, f"pkgtest-{port}", proc, deadline=30)
            assert registered, "the installed daemon registered nothing within 30 s"
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uid = pwd.getpwnam("regagent").pw_uid
            assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
            for field in ("CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"):
                assert field in status, status
            assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status, status
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=25)
            elapsed = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        # The stop bound the unit's TimeoutStopSec=30s is built on (systemd/README.md).
        assert elapsed < 20, f"SIGTERM took {elapsed:.1f} s"
        assert "Traceback" not in stderr, stderr


def _wait_for_service(
    cluster: SimCluster, node: str, service_id: str, proc: subprocess.Popen[str], deadline: float
) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"regagent run exited with {proc.returncode}:\n{stderr}")
        found: Optional[Dict[str, Any]] = cluster.catalog_node_services(node)
        if found and service_id in (found.get("Services") or {}):
            return True
        time.sleep(0.2)
    return False


def test_purge_leaves_only_the_documented_leftovers(installed: HostState) -> None:
    result = run([*APT, "purge", "regagent"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dpkg_status("regagent") in ("", "un", "pn")
    gone = [
        "/usr/bin/regagent",
        "/lib/systemd/system/regagent.service",
        "/etc/systemd/system/multi-user.target.wants/regagent.service",
        f"{DEB_SITE}/regagent",
        "/usr/share/doc/regagent",
        "/var/lib/regagent",
        "/var/lib/dpkg/info/regagent.list",
    ]
    if not installed.etc_existed:
        gone.append("/etc/regagent")
    left = [p for p in gone if os.path.lexists(p)]
    assert not left, f"left after purge: {left}"
    # Documented leftovers: the system user and group (Debian's daemons keep theirs), and
    # the Debian libraries apt installed as dependencies (apt-get autoremove removes them).
    assert _user_exists("regagent")
    for package in DEB_DEPENDS:
        assert dpkg_status(package).startswith("ii"), package


# ---------------------------------------------------------------------------------------- rpm


def rpm_query(path: Path, *args: str) -> str:
    return must(["rpm", "-qp", *args, str(path)])


def test_rpm_files(rpm_package: Path) -> None:
    paths = set(must(["rpm", "-qlp", str(rpm_package)]).split())
    assert paths >= RPM_FILES, RPM_FILES - paths
    shipped = {p[len(RPM_SITE) + 1 :] for p in paths if p.startswith(f"{RPM_SITE}/regagent/")}
    assert shipped >= source_modules(), source_modules() - shipped
    assert f"{RPM_SITE}/regagent-{version()}.dist-info/entry_points.txt" in paths
    modes = rpm_query(
        rpm_package,
        "--queryformat",
        "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]",
    )
    assert "drwxr-x--- regagent:regagent /var/lib/regagent\n" in modes
    assert "-rwxr-xr-x root:root /usr/bin/regagent\n" in modes
    config = rpm_query(rpm_package, "--configfiles").split()
    assert config == ["/etc/regagent/conf.d/00-regagent.yaml"]
    noreplace = rpm_query(rpm_package, "--queryformat", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    assert "cn /etc/regagent/conf.d/00-regagent.yaml" in noreplace
    assert rpm_query(rpm_package, "--queryformat", "%{VERSION} %{ARCH}") == f"{version()} noarch"


def test_rpm_requires(rpm_package: Path) -> None:
    requires = set(rpm_query(rpm_package, "--requires").splitlines())
    print("rpm requires:", *sorted(requires), sep="\n  ")
    for needed in (
        "python(abi) = 3.9",
        "python3.9dist(python-consul2) >= 0.1.5",
        "python3.9dist(psutil) >= 5.9.4",
        "python3.9dist(pyyaml) >= 6",
        "python3.9dist(prometheus-client) >= 0.16",
        "python3.9dist(structlog) >= 22.3",
        "python3dist(requests)",
        "python3dist(urllib3)",
        "shadow-utils",
    ):
        assert needed in requires, needed


def test_rpm_scripts_and_unit(rpm_package: Path, tmp_path: Path) -> None:
    scripts = rpm_query(rpm_package, "--scripts")
    assert "useradd -r -g regagent -d /var/lib/regagent -s /sbin/nologin" in scripts
    assert "systemctl --no-reload preset regagent.service" in scripts
    assert "systemctl try-restart regagent.service" in scripts
    cpio = subprocess.run(
        ["rpm2cpio", str(rpm_package)], capture_output=True, timeout=60, check=True
    ).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=tmp_path, timeout=60, check=True)
    unit = (tmp_path / "usr/lib/systemd/system/regagent.service").read_bytes()
    assert unit == (REPO / "systemd/regagent.service").read_bytes()
    assert (tmp_path / "usr/bin/regagent").read_text().startswith("#!/usr/bin/python3 -s\n")
    sysusers = (tmp_path / "usr/lib/sysusers.d/regagent.conf").read_text()
    assert sysusers.split()[:2] == ["u", "regagent"]


def test_rpmlint_reports_no_errors(rpm_package: Path) -> None:
    srpm = DIST / f"regagent-{version()}-1.src.rpm"
    result = run(
        [
            "rpmlint",
            "-c",
            str(REPO / "packaging/rpm/rpmlint.toml"),
            str(rpm_package),
            str(srpm),
            str(DIST / "regagent.spec"),
        ],
        timeout=300,
    )
    print("rpmlint:", result.stdout, sep="\n")
    summary = re.search(r"(\d+) errors, (\d+) warnings", result.stdout)
    assert summary, result.stdout + result.stderr
    assert summary.group(1) == "0", result.stdout
