"""What the process's signals ask of the daemon's loop, and how they reach it.

- SIGTERM/SIGINT ask for a stop, SIGHUP for a reload. The handlers only record the request and
  write a byte to a self-pipe, which ends the loop's wait (`wait`) at once. No lock is involved
  that a handler, running in the middle of the main thread, could deadlock on.
- Inside `interruptible()` (a cycle, the watch's partial cycles, deregistration), a stop request
  arms SIGALRM for `grace` seconds, and the alarm raises `StopNow` in the main thread, so a
  cycle wedged in one call cannot hold the stop up. A second stop signal raises it at once.

The other threads regagent starts leave these signals to the main thread (`regagent.threads`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from types import FrameType
from typing import Callable, Iterator, Optional


class StopNow(BaseException):
    """Raised in the main thread to end work that outlived its grace after a stop request. A
    BaseException, so that no `except Exception` on the way swallows it."""


class Signals:
    """Stop and reload requests, from the signal handlers or from code, and the self-pipe that
    wakes the loop's wait; `wait` makes it the loop's `regagent.threads.Wakeable`."""

    def __init__(self, grace: float, on_stop: Callable[[str], None] = lambda reason: None) -> None:
        self.grace = grace  # seconds interruptible work may go on after a stop request
        self.on_stop = on_stop  # told once, with the reason, when a stop is first requested
        self.stop = threading.Event()
        self.reload_requested = False
        self._interruptible = False
        self._alarm_installed = False  # SIGALRM's default action would kill the process
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def pending(self) -> bool:
        """A stop or a reload was requested: the wait between cycles should end."""
        return self.stop.is_set() or self.reload_requested

    def request_stop(self, reason: str = "requested") -> None:
        """Ends the wait at once; interruptible work gets `grace` seconds more."""
        if self.stop.is_set():
            if self._interruptible:  # a second signal: do not wait out the grace
                raise StopNow()
            return
        self.on_stop(reason)
        self.stop.set()
        if self._interruptible:
            self._arm(self.grace)
        self._wake()

    def request_reload(self) -> None:
        """Re-read the configuration before the next cycle (the wait ends now)."""
        self.reload_requested = True
        self._wake()

    def take_reload(self) -> bool:
        """Whether a reload is to be done now (and not again until requested again)."""
        wanted = self.reload_requested and not self.stop.is_set()
        self.reload_requested = False
        return wanted

    def install(self) -> None:
        """The handlers, in the main thread (where Python runs every handler)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._alarm_installed = True

    @contextlib.contextmanager
    def interruptible(self, bound: Optional[float] = None) -> Iterator[None]:
        """Work a stop request may cut short after `grace`; with `bound`, work that is cut
        short after `bound` seconds anyway (`StopNow`)."""
        self._interruptible = True
        if bound is not None:
            self._arm(bound)
        try:
            yield
        finally:
            self._interruptible = False
            self._arm(0)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Up to `timeout` seconds (None: until woken), less if a stop or reload is requested;
        True if one is."""
        if not self.pending:
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
            if readable:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 512)
        return self.pending

    def wake(self) -> None:
        """Ends the wait at once without asking anything (another thread has news for the
        loop, e.g. the node watch); safe from any thread."""
        self._wake()

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
            os.write(self._wake_w, b"x")

    def _arm(self, seconds: float) -> None:
        """SIGALRM in `seconds` (0 cancels), if our handler is there to turn it into StopNow."""
        if self._alarm_installed:
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def _on_stop_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _on_hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.request_reload()

    def _on_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._interruptible:
            raise StopNow()
