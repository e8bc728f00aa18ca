"""Which process owns a listening socket, found by socket inode, only when asked.

The kernel does not say which process holds a socket; the only way is to read every process's
`/proc/<pid>/fd` links, which costs as much as there are open descriptors. So the lookup is done
for a batch of inodes at once, stops as soon as all are found, looks first at processes of the
socket's owner uid, and remembers the answer per inode (a listening socket keeps its inode for
its whole life, so a steady host costs nothing after the first cycle). Without permission to
read another user's descriptors (an unprivileged run) the owner is simply unknown.
"""

from __future__ import annotations

import os
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

import psutil  # type: ignore[import-untyped]  # no stubs for 5.9.x

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """What psutil would tell about a process; empty fields where access was denied."""

    pid: int
    name: str = ""
    exe: str = ""
    cmdline: Tuple[str, ...] = ()
    user: str = ""

    @property
    def names(self) -> Set[str]:
        """Every name the process goes by: comm, exe basename and argv[0] basename."""
        found = {self.name, os.path.basename(self.exe)}
        if self.cmdline:
            found.add(os.path.basename(self.cmdline[0]))
        found.discard("")
        return found

    @property
    def label(self) -> str:
        """`name[pid]` for tables and logs."""
        return f"{self.name or '?'}[{self.pid}]"


def describe_process(pid: int) -> ProcessInfo:
    """Name, exe, cmdline and user of `pid`; each field stays empty if psutil is denied it."""
    try:
        proc = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ProcessInfo(pid)
    name = _attempt(proc.name, "")
    exe = _attempt(proc.exe, "")
    cmdline: Tuple[str, ...] = tuple(_attempt(proc.cmdline, []))
    user = _attempt(proc.username, "")
    return ProcessInfo(pid, name, exe, cmdline, user)


def _attempt(getter: Callable[[], T], default: T) -> T:
    try:
        return getter()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return default


class ProcessResolver:
    """Maps socket inodes to processes, caching answers (also 'unknown') per inode."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
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
                    self._cache[inode] = describe_process(pid) if pid is not None else None
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
