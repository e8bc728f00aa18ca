"""Runs a command inside the parts of regagent.service's sandbox that work without systemd as
PID 1, read from the unit file itself, so a test can run the installed daemon as systemd would.

    /usr/bin/python3 tests/sandbox_exec.py systemd/regagent.service -- /usr/bin/regagent run ...

Emulated, the way systemd implements each (src/core/execute.c, src/shared/seccomp-util.c):
User=/Group= (no supplementary groups), CapabilityBoundingSet= (empty), NoNewPrivileges=,
ProtectProc= (a private /proc mounted with hidepid=), ProtectSystem=strict for the root file
system with StateDirectory= writable, SystemCallFilter= (allow list minus deny lists, the
implicitly allowed calls, SystemCallErrorNumber=), SystemCallArchitectures=native,
RestrictAddressFamilies= (socket() of another family fails with EAFNOSUPPORT),
MemoryDenyWriteExecute= and RestrictNamespaces=yes. Not emulated: the other namespaces
(PrivateTmp=, PrivateDevices=, ProtectKernel*=, ProtectHostname=, PrivateIPC=) and cgroup
settings. Needs root and Debian's python3-seccomp; run it with /usr/bin/python3.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import pwd
import socket
import subprocess
import sys
from typing import Dict, List, Set

import seccomp  # type: ignore[import-not-found,unused-ignore]  # Debian's python3-seccomp

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
SHM_EXEC = 0o100000
# systemd.exec(5): allowed even with an allow list that does not name them.
IMPLICIT = {
    "execve",
    "exit",
    "exit_group",
    "getrlimit",
    "rt_sigreturn",
    "sigreturn",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "nanosleep",
    "clock_nanosleep",
}

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def parse_unit(path: str) -> Dict[str, List[str]]:
    """Key -> values of the [Service] section (keys may repeat)."""
    settings: Dict[str, List[str]] = {}
    section = ""
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def expand(name: str) -> Set[str]:
    """The system calls of a name or @group, as systemd-analyze lists them (recursively)."""
    if not name.startswith("@"):
        return {name}
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    calls: Set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item)
    return calls


def allowed_syscalls(filters: List[str]) -> Set[str]:
    allowed: Set[str] = set()
    for entry in filters:
        deny = entry.startswith("~")
        names = set().union(*(expand(n.split(":")[0]) for n in entry.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed | IMPLICIT


def mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    check(
        libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()),
        f"mount {target}",
    )


def file_system(settings: Dict[str, List[str]]) -> None:
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", "", MS_REC | MS_PRIVATE)
    hidepid = settings.get("ProtectProc", ["default"])[-1]
    if hidepid != "default":
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"hidepid={hidepid}")
    if settings.get("ProtectSystem", [""])[-1] == "strict":
        writable = [f"/var/lib/{d}" for v in settings.get("StateDirectory", []) for d in v.split()]
        for path in writable:
            if not os.path.isdir(path):  # systemd would create it; this helper changes nothing
                raise SystemExit(f"sandbox_exec: {path} (StateDirectory=) does not exist")
            mount(path, path, "", MS_BIND)
        mount("none", "/", "", MS_REMOUNT | MS_BIND | MS_RDONLY)


def drop_privileges(settings: Dict[str, List[str]]) -> None:
    user = pwd.getpwnam(settings["User"][-1])
    group = settings.get("Group", [user.pw_name])[-1]
    gid = user.pw_gid if group == user.pw_name else int(group)
    if settings.get("CapabilityBoundingSet", [None])[-1] == "":
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
            last_cap = int(handle.read())
        for cap in range(last_cap + 1):
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    if settings.get("NoNewPrivileges", ["no"])[-1] == "yes" or "SystemCallFilter" in settings:
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def syscall_filters(settings: Dict[str, List[str]]) -> None:
    error = settings.get("SystemCallErrorNumber", [""])[-1]
    default = seccomp.ERRNO(getattr(errno, error)) if error else seccomp.KILL_PROCESS
    allow = seccomp.SyscallFilter(defaction=default)
    if "SystemCallFilter" in settings:
        for name in sorted(allowed_syscalls(settings["SystemCallFilter"])):
            # A call this architecture does not have is rejected by libseccomp: skip it.
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                allow.add_rule(seccomp.ALLOW, name)
    deny = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    families = settings.get("RestrictAddressFamilies", [""])[-1].split()
    if families:
        keep = {getattr(socket, f) for f in families}
        for family in range(46):  # AF_MAX on Linux 6.x
            if family not in keep:
                deny.add_rule(
                    seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family)
                )
        deny.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, 46))
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        deny.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for call in ("mprotect", "pkey_mprotect"):
            deny.add_rule(
                seccomp.ERRNO(errno.EPERM),
                call,
                seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC),
            )
        deny.add_rule(
            seccomp.ERRNO(errno.EPERM),
            "shmat",
            seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC),
        )
    if settings.get("RestrictNamespaces", ["no"])[-1] == "yes":
        for call in ("unshare", "setns"):
            deny.add_rule(seccomp.ERRNO(errno.EPERM), call)
    # Both built before either is loaded: the allow list may not allow loading another filter.
    deny.load()
    if "SystemCallFilter" in settings:
        allow.load()


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    settings = parse_unit(argv[0])
    file_system(settings)
    drop_privileges(settings)
    syscall_filters(settings)
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
