"""The state directory (`sync.state_dir`): every file regagent reads back passes the same rules.

regagent keeps a few small files there (`discovered.json`, `node.json`, `run.lock`). Whatever is
read back from them can change what regagent registers, or which node it retires, so a file is
used only if regagent could have written it (design decision 12):

- the directory and the file belong to regagent's (effective) user and are not writable by
  group or others: anyone else could have planted the content. Root running a one-shot command
  (`regagent sync --dry-run` on an installed host) reads the daemon's files as the daemon's own:
  a directory owned by a system account (the package's user `regagent`) and files owned by that
  same account; what root writes there is handed to that account, so the daemon keeps trusting
  it;
- the file is opened without following a symlink and without blocking (a FIFO), must be a
  regular file, and is read up to a size cap (`/dev/zero` linked in must not eat memory).

Writes are atomic: a temporary file in the same directory (mode 600), fsync, rename, fsync of
the directory. A temporary left behind by a process killed mid-write (`kill -9`) is removed by
the next write of the same file, once it is older than `STALE_TEMPORARY_AGE`, so a writer in
another process (a one-shot command beside the daemon) never loses its file mid-write.

Problems are logged once per instance of `Warnings` (each (event, path, error) once): a broken
state directory stays broken for every 30 s cycle. No module-level state: the owner of a
`Warnings` (discovery, the node identity) decides how long "once" lasts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from typing import Any, List, Optional, Set, Tuple

import structlog

log = structlog.get_logger(__name__)

TEMPORARY_SUFFIX = ".tmp"
# A temporary this old is a leftover: a write takes milliseconds (seconds on a slow disk).
STALE_TEMPORARY_AGE = 60.0
MAX_DIRECTORY_ENTRIES = 1000  # scanned for leftovers at most; regagent keeps a handful
SYSTEM_UID_MAX = 999  # system accounts, as Debian's and RHEL's login.defs (SYS_UID_MAX) have them


class Untrusted(Exception):
    """The file or directory may have been written by someone else: not used."""


class Corrupt(Exception):
    """The path does not hold a file regagent could have written."""


class Warnings:
    """Says each (event, subject, error) once for as long as this object lives."""

    def __init__(self) -> None:
        self._said: Set[Tuple[str, str, str]] = set()

    def once(self, event: str, subject: str, error: str, **fields: Any) -> None:
        key = (event, subject, error)
        if key not in self._said:
            self._said.add(key)
            log.warning(event, path=subject, error=error, **fields)


def data_owner(directory: Optional[os.stat_result] = None) -> int:
    """The user whose files regagent trusts: its own effective user; for root, the system
    account that owns the state directory (the daemon's user), when one does."""
    euid = os.geteuid()
    if euid == 0 and directory is not None and 0 < directory.st_uid <= SYSTEM_UID_MAX:
        return directory.st_uid
    return euid


def file_trust_problem(
    info: os.stat_result, path: str, owner: Optional[int] = None
) -> Optional[str]:
    """Why a file or directory with this stat is not trusted as regagent's own, or None.

    Only `owner` (default: this process's user) may be able to write it (trust model, design
    decision 12).
    """
    expected = os.geteuid() if owner is None else owner
    if info.st_uid != expected:
        return (
            f"is owned by uid {info.st_uid}, not by regagent's uid {expected}; "
            f"run: chown {expected} {path}"
        )
    writable = [
        who
        for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
        if info.st_mode & bit
    ]
    if writable:
        return f"is writable by {' and '.join(writable)}; run: chmod go-w {path}"
    return None


def directory_problem(directory: str) -> Optional[str]:
    """Why `directory` must not hold regagent's state, or None (also when it does not exist
    yet: the first write creates it, mode 750)."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    return file_trust_problem(info, directory, data_owner(info))


def directory_owner(directory: str) -> int:
    """`data_owner` of `directory` (this process's user when it cannot be inspected)."""
    try:
        return data_owner(os.stat(directory))
    except OSError:
        return os.geteuid()


class StateDir:
    """Trusted, bounded reads and atomic writes of the files in one state directory."""

    def __init__(self, path: str, warnings: Optional[Warnings] = None) -> None:
        self.path = path
        self.warnings = warnings or Warnings()

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def problem(self) -> Optional[str]:
        """Why the directory is not trusted, or None."""
        return directory_problem(self.path)

    def read(self, name: str, max_bytes: int) -> bytes:
        """The content of `name`; raises FileNotFoundError, Untrusted (the directory or the file),
        Corrupt (not a regular file, a symlink, over `max_bytes`) or OSError."""
        problem = self.problem()
        if problem:
            raise Untrusted(f"state directory {problem}")
        return read_own_file(self.file(name), max_bytes, directory_owner(self.path))

    def write(self, name: str, text: str) -> None:
        """Atomically replaces `name` with `text` (mode 600); raises Untrusted or OSError.

        The rename replaces whatever was at the path (a symlink, a FIFO, another user's file)
        without following or opening it."""
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        problem = self.problem()
        if problem:
            raise Untrusted(f"state directory {problem}")
        self.remove_leftovers(name)
        owner = directory_owner(self.path)
        fd, temporary = tempfile.mkstemp(
            prefix=temporary_prefix(name), suffix=TEMPORARY_SUFFIX, dir=self.path
        )
        try:
            if owner != os.geteuid():
                os.fchown(fd, owner, -1)  # root writing the daemon's file: it stays the daemon's
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.file(name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(self.path)

    def remove_leftovers(
        self, name: str, *, older_than: float = STALE_TEMPORARY_AGE, now: Optional[float] = None
    ) -> List[str]:
        """Removes temporaries of `name` that a killed writer left behind: regular files of
        regagent's user, named like ours, older than `older_than`. What was removed."""
        prefix = temporary_prefix(name)
        owner = directory_owner(self.path)
        moment = time.time() if now is None else now
        removed: List[str] = []
        try:
            with os.scandir(self.path) as entries:
                for count, entry in enumerate(entries):
                    if count >= MAX_DIRECTORY_ENTRIES:
                        break
                    ours = entry.name.startswith(prefix) and entry.name.endswith(TEMPORARY_SUFFIX)
                    if not ours:
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if (
                        stat.S_ISREG(info.st_mode)
                        and info.st_uid == owner
                        and moment - info.st_mtime >= older_than
                    ):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed.append(entry.name)
        except OSError:
            return removed
        if removed:
            log.info("state_leftovers_removed", path=self.path, files=sorted(removed))
        return removed


class StateFile:
    """One file of the state directory, its problems said once each, named `<what>_...`:
    `_untrusted` (not read, replaced at the next save), `_corrupt` (not used, replaced at the
    next save), `_unreadable`, `_unwritable`."""

    def __init__(self, directory: StateDir, name: str, what: str, max_bytes: int) -> None:
        self.directory = directory
        self.name = name
        self.what = what
        self.max_bytes = max_bytes

    @property
    def path(self) -> str:
        return self.directory.file(self.name)

    def read(self) -> Optional[str]:
        """The text, or None (said once per cause unless simply absent)."""
        warn = self.directory.warnings.once
        try:
            data = self.directory.read(self.name, self.max_bytes)
        except FileNotFoundError:
            return None
        except Untrusted as exc:
            subject = self.directory.path if str(exc).startswith("state directory") else self.path
            warn(f"{self.what}_untrusted", subject, _as_file(exc), action="not read")
            return None
        except Corrupt as exc:
            self.corrupt(str(exc))
            return None
        except OSError as exc:
            warn(f"{self.what}_unreadable", self.path, str(exc), action="not used")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.corrupt("is not UTF-8 text")
            return None

    def corrupt(self, error: str) -> None:
        """Says (once) that the content is not what regagent writes."""
        self.directory.warnings.once(
            f"{self.what}_corrupt", self.path, error, action="not used; replaced at the next save"
        )

    def write(self, text: str) -> bool:
        """Atomically replaces the file; False (said once) when it cannot be written."""
        try:
            self.directory.write(self.name, text)
        except Untrusted as exc:
            self.directory.warnings.once(
                f"{self.what}_untrusted", self.directory.path, str(exc), action="not written"
            )
            return False
        except OSError as exc:
            self.directory.warnings.once(f"{self.what}_unwritable", self.path, str(exc))
            return False
        return True


class Lock:
    """An exclusive `flock` on a file of the state directory, held until `release` or until the
    process ends, however it ends (the kernel drops it with the last descriptor): no stale
    pid file to judge. The file is created mode 600 and must pass the same trust rules."""

    def __init__(self, directory: StateDir, name: str) -> None:
        self.directory = directory
        self.name = name
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, attempts: int = 20, pause: float = 0.1) -> bool:
        """Takes the lock; False when another process holds it for `attempts` tries (a
        one-shot command only tests it for a moment). Raises Untrusted or OSError."""
        if self._fd is not None:
            return True
        os.makedirs(self.directory.path, mode=0o750, exist_ok=True)
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            for attempt in range(max(1, attempts)):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if attempt + 1 < attempts:
                        time.sleep(pause)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))  # for a person, never read
                self._fd, fd = fd, -1
                return True
            return False
        finally:
            if fd >= 0:
                os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now. False when there is no lock file, or
        when it (or the directory) is not trusted: then nothing in it is believed either."""
        if self._fd is not None:
            return False
        try:
            if self.directory.problem():
                return False
            fd = self._open(os.O_RDONLY)
        except (OSError, Untrusted, Corrupt):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # also drops the test lock at once
        return False

    def _open(self, flags: int) -> int:
        problem = self.directory.problem()
        if problem:
            raise Untrusted(f"state directory {problem}")
        path = self.directory.file(self.name)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Corrupt("is a symbolic link (not followed)") from None
            raise
        info = os.fstat(fd)
        problem = None if stat.S_ISREG(info.st_mode) else "is not a regular file"
        problem = problem or file_trust_problem(info, path, directory_owner(self.directory.path))
        if problem:
            os.close(fd)
            raise Untrusted(problem)
        return fd


def _as_file(exc: Untrusted) -> str:
    text = str(exc)
    return text if text.startswith("state directory") else f"state file {text}"


def temporary_prefix(name: str) -> str:
    """`.discovered.` for `discovered.json`: hidden, and named for the file it replaces."""
    return "." + name.split(".", 1)[0] + "."


def read_own_file(path: str, max_bytes: int, owner: Optional[int] = None) -> bytes:
    """The bytes of a file regagent wrote (owned by `owner`, default this process's user),
    opened without following a symlink and without blocking on a FIFO; raises Untrusted,
    Corrupt or OSError (FileNotFoundError if absent)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Corrupt("is a symbolic link (not followed)") from None
        if exc.errno == errno.ENXIO:  # a socket or a FIFO without writer on some systems
            raise Corrupt("is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Corrupt("is not a regular file")
        problem = file_trust_problem(info, path, owner)
        if problem:
            raise Untrusted(problem)
        if info.st_size > max_bytes:
            raise Corrupt(f"is larger than {_size(max_bytes)}")
        data = _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew after the fstat
        raise Corrupt(f"is larger than {_size(max_bytes)}")
    return data


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: List[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
