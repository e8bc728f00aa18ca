"""`LogThrottle`: at most one log line per kind of event per interval.

Whatever a client or a library can make happen many times a second (a scraper that resets its
connection, a warning, an exception in a thread) must not become as many journal lines: the
first of a kind is logged at once, later ones within `every` seconds are only counted, and the
first line after that carries how many were left out (`suppressed`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Hashable, Optional, Tuple

Clock = Callable[[], float]

MAX_KINDS = 256  # kinds remembered; the least recently logged is forgotten beyond that


class LogThrottle:
    """Decides, per kind, whether a line is logged now; thread-safe."""

    def __init__(self, every: float, clock: Clock = time.monotonic, max_kinds: int = MAX_KINDS):
        self.every = every
        self.clock = clock
        self.max_kinds = max_kinds
        self._lock = threading.Lock()
        self._kinds: Dict[Hashable, Tuple[float, int]] = {}  # kind -> (last logged, left out)

    def admit(self, kind: Hashable) -> Optional[int]:
        """None: say nothing (counted). Otherwise log now, with the returned number of lines
        of this kind left out since the last one logged."""
        now = self.clock()
        with self._lock:
            last = self._kinds.get(kind)
            if last is not None and now - last[0] < self.every:
                self._kinds[kind] = (last[0], last[1] + 1)
                return None
            self._kinds.pop(kind, None)  # re-inserted last: the dict is in order of logging
            self._kinds[kind] = (now, 0)
            while len(self._kinds) > self.max_kinds:
                del self._kinds[next(iter(self._kinds))]
            return 0 if last is None else last[1]
