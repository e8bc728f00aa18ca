"""Threads that leave the daemon's signals to the main thread, and what a wait can be woken by.

The daemon waits in `select` on its self-pipe and is woken by the signal handlers that Python
runs in the main thread. A signal the kernel delivered to another thread would not interrupt
that wait, so every thread regagent starts inherits a mask that blocks those signals.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional, Protocol

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)


class Wakeable(Protocol):
    """What a wait between two pieces of work waits on: `wait(timeout)` returns after
    `timeout` seconds or as soon as it is woken for good, and says whether it was (the daemon's
    stop or reload request, `regagent.signals.Signals`; a `threading.Event` is one too)."""

    def wait(self, timeout: Optional[float] = None) -> bool: ...


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask without our signals, so the kernel delivers them
    to the main thread, whose blocking call they must interrupt."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread (never joined at exit: a stop does not wait for it), signals blocked."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    with signals_blocked():
        thread.start()
    return thread
