"""Which process owns a listening socket, found by socket inode, only when asked.

The kernel does not say which process holds a socket; the only way is to read every process's
`/proc/<pid>/fd` links, which costs as much as there are open descriptors. So the lookup is done
for a batch of inodes at once, stops as soon as all are found, looks first at processes of the
socket's owner uid, and remembers the answer per inode (a listening socket keeps its inode for
its whole life, so a steady host costs nothing after the first cycle). Without permission to
read another user's descriptors (an unprivileged run) the owner is simply unknown.

What a process says about itself is not evidence: any user can set its argv[0] and its name
(`exec -a node_exporter`, `prctl(PR_SET_NAME)`) and get any number of ports registered as an
exporter. A process's names count for discovery (`ProcessInfo.trusted_names`) only when root
started it, or, for the executable's own file name, when that file and its directory are
owned by root and writable only by root: a name only the administrator could have chosen.
Such a name makes a listener a candidate; its answer must still confirm it.

Registering a listener whose answer confirms nothing (an exporter that is slow or empty while
its backend is down) takes more (`ProcessInfo.vouched_names`): any user may *run* a root-owned
`/usr/bin/prometheus-mongodb-exporter` on ports of their choosing. So the process must also run
as root or as a system account (a uid up to SYS_UID_MAX of /etc/login.defs, 999 by default),
which is how every packaged exporter's unit runs it and what no regular user can become.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import (
    Callable,
    Collection,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

from regagent.rules import printable_text

T = TypeVar("T")

LOGIN_DEFS = "/etc/login.defs"
SYS_UID_MAX = 999  # login.defs' default: UID_MIN (1000) - 1


@dataclass(frozen=True)
class ProcessInfo:
    """What psutil would tell about a process; empty fields where access was denied."""

    pid: int
    name: str = ""
    exe: str = ""
    cmdline: Tuple[str, ...] = ()
    user: str = ""
    uid: Optional[int] = None  # real uid; None when unknown
    exe_trusted: bool = False  # the executable and its directory are root's alone
    system_user: bool = False  # runs as root or a system account (see the module docstring)

    @property
    def names(self) -> Set[str]:
        """Every name the process goes by: comm, exe basename and argv[0] basename."""
        found = {self.name, os.path.basename(self.exe)}
        if self.cmdline:
            found.add(os.path.basename(self.cmdline[0]))
        found.discard("")
        return found

    @property
    def trusted_names(self) -> Set[str]:
        """The names that count as evidence of which exporter this is (see the module doc):
        all of them for a process root started, else only the file name of an executable
        only root can change, else none."""
        if self.uid == 0:
            return self.names
        if self.exe_trusted and self.exe:
            return {os.path.basename(self.exe)}
        return set()

    @property
    def vouched_names(self) -> Set[str]:
        """The names that may register a listener without its answer confirming it: those of a
        process root started, or the executable's file name (root's alone) of a process that
        runs as a system account; none otherwise (see the module docstring)."""
        if self.uid == 0:
            return self.names
        if self.system_user and self.exe_trusted and self.exe:
            return {os.path.basename(self.exe)}
        return set()

    @property
    def label(self) -> str:
        """`name[pid]` for tables and logs."""
        return f"{self.name or '?'}[{self.pid}]"


MAX_ARGS = 16  # of the command line kept; only argv[0] is ever used, the rest is for display
FIELD_MAX = 256  # bytes of each text field kept


def system_uid_max(login_defs: str) -> int:
    """The highest system account uid a login.defs text sets (SYS_UID_MAX, else UID_MIN - 1),
    or SYS_UID_MAX's default."""
    values: Dict[str, int] = {}
    for line in login_defs.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("SYS_UID_MAX", "UID_MIN") and words[1].isdigit():
            values[words[0]] = int(words[1])
    if "SYS_UID_MAX" in values:
        return values["SYS_UID_MAX"]
    if values.get("UID_MIN", 0) > 0:
        return values["UID_MIN"] - 1
    return SYS_UID_MAX


def read_system_uid_max(path: str = LOGIN_DEFS) -> int:
    """`system_uid_max` of the file at `path` (its default when unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return system_uid_max(handle.read(1 << 16))
    except OSError:
        return SYS_UID_MAX


def describe_process(
    pid: int, proc_root: str = "/proc", sys_uid_max: int = SYS_UID_MAX
) -> ProcessInfo:
    """Name, exe, cmdline, user and uid of `pid`; each field stays empty if psutil is denied it.

    Every text is the process's own choice, so it is made printable (no escapes reach
    `discover` or the log) and bounded.
    """
    import psutil  # type: ignore[import-untyped]  # no stubs for 5.9.x; only discovery uses it

    try:
        proc = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ProcessInfo(pid)
    name = printable_text(_attempt(proc.name, ""), FIELD_MAX)
    exe = _attempt(proc.exe, "")
    args: List[str] = _attempt(proc.cmdline, [])[:MAX_ARGS]
    cmdline: Tuple[str, ...] = tuple(printable_text(arg, FIELD_MAX) for arg in args)
    user = printable_text(_attempt(proc.username, ""), FIELD_MAX)
    uids = _attempt(proc.uids, None)
    uid = int(uids.real) if uids is not None else None
    trusted = executable_trusted(pid, exe, proc_root)
    system = uid is not None and uid <= sys_uid_max
    return ProcessInfo(pid, name, printable_text(exe, 4096), cmdline, user, uid, trusted, system)


def executable_trusted(pid: int, exe: str, proc_root: str = "/proc") -> bool:
    """Whether the file `pid` runs, and the directory it is in, are owned by root and writable
    only by root, so that its file name is the administrator's choice.

    The file is stat'ed through `/proc/<pid>/exe` (the very inode running, even if replaced or
    in a container) and the directory through `/proc/<pid>/root` (the process's own view).
    """
    if not exe:
        return False
    try:
        program = os.stat(os.path.join(proc_root, str(pid), "exe"))
    except OSError:
        return False
    parent = _directory_of(program, exe, os.path.join(proc_root, str(pid), "root"))
    return parent is not None and _root_only(program) and _root_only(parent)


def _directory_of(program: os.stat_result, exe: str, root: str) -> Optional[os.stat_result]:
    """The directory `exe` is in, seen from the process's root. The kernel gives `exe` from
    the reader's root when it can reach the file; a process in another mount namespace (a
    container, `ip netns exec`, a chroot) may get a path with a prefix that its own root lacks.
    Then the longest tail of `exe` under `root` that is the running file itself (same inode)
    names the directory; none: None."""
    path = exe.removesuffix(" (deleted)")  # an upgraded package's old binary
    try:
        return os.stat(os.path.join(root, os.path.dirname(path).lstrip("/")))
    except OSError:
        pass
    parts = path.strip("/").split("/")
    for start in range(1, len(parts)):
        tail = os.path.join(root, *parts[start:])
        try:
            found = os.stat(tail)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (program.st_dev, program.st_ino):
            try:
                return os.stat(os.path.dirname(tail))
            except OSError:
                return None
    return None


def _root_only(info: os.stat_result) -> bool:
    return info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _attempt(getter: Callable[[], T], default: T) -> T:
    import psutil

    try:
        return getter()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return default


class ProcessResolver:
    """Maps socket inodes to processes, caching answers (also 'unknown') per inode."""

    def __init__(self, proc_root: str = "/proc", login_defs: str = LOGIN_DEFS) -> None:
        self.proc_root = proc_root
        self.sys_uid_max = read_system_uid_max(login_defs)
        self._cache: Dict[int, Optional[ProcessInfo]] = {}
        self._lock = threading.Lock()
        self.scans = 0  # /proc passes made, for tests and debugging

    def resolve(
        self, inodes: Iterable[int], uid_hints: Optional[Mapping[int, int]] = None
    ) -> Dict[int, Optional[ProcessInfo]]:
        """Owner of each inode (None when unknown); one /proc pass for all uncached inodes."""
        wanted = {inode for inode in inodes if inode}
        with self._lock:
            missing = wanted - self._cache.keys()
            if missing:
                owners = self._scan(missing, set((uid_hints or {}).values()))
                for inode in missing:
                    pid = owners.get(inode)
                    found = (
                        describe_process(pid, self.proc_root, self.sys_uid_max)
                        if pid is not None
                        else None
                    )
                    self._cache[inode] = found
            return {inode: self._cache[inode] for inode in wanted}

    def forget_except(self, live_inodes: Collection[int]) -> None:
        """Drops answers for sockets that no longer listen, so the cache stays small."""
        live = set(live_inodes)
        with self._lock:
            for inode in [i for i in self._cache if i not in live]:
                del self._cache[inode]

    def _scan(self, wanted: Set[int], uids: Set[int]) -> Dict[int, int]:
        self.scans += 1
        found: Dict[int, int] = {}
        for pid in self._pids_owners_first(uids):
            for inode in self._socket_inodes(pid):
                if inode in wanted and inode not in found:
                    found[inode] = pid
            if len(found) == len(wanted):
                break
        return found

    def _pids_owners_first(self, uids: Set[int]) -> List[int]:
        try:
            entries = [e for e in os.scandir(self.proc_root) if e.name.isdigit()]
        except OSError:
            return []
        first: List[int] = []
        rest: List[int] = []
        for entry in entries:
            try:
                uid = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                continue
            (first if uid in uids else rest).append(int(entry.name))
        return first + rest

    def _socket_inodes(self, pid: int) -> Iterable[int]:
        fd_dir = os.path.join(self.proc_root, str(pid), "fd")
        try:
            entries = list(os.scandir(fd_dir))
        except OSError:  # PermissionError for other users' processes when unprivileged
            return ()
        inodes = []
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.append(int(target[8:-1]))
        return inodes
