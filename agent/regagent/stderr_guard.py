"""Python's own ways of writing to stderr, turned into regagent log lines.

regagent's stderr is its log: one JSON object per line under systemd, one line per event at a
terminal. Python and its libraries write there on their own, in multi-line text, and some of it
can be set off from outside at will (a client that resets its connection made the standard
library's HTTP server print a 17-line traceback per connection). `install()` routes each of
those paths through structlog as one line, at most one a minute per kind, with the count of
those left out (`suppressed`):

- an exception nobody caught in a thread (`threading.excepthook`): `thread_crashed`;
- one Python can only report, in a `__del__` or a callback (`sys.unraisablehook`):
  `unraisable_exception`;
- a warning (`warnings.showwarning`): `python_warning`;
- a record of the standard `logging` module from a library, which would otherwise reach its
  last-resort handler (`logging.lastResort`): `library_log`;
- an exception that ends the main thread (`sys.excepthook`): `crashed`, then the usual exit
  status 1.

Each names the exception and where it was raised (`at`: the innermost frames, one line), never a
multi-line traceback. What the interpreter itself prints on a fatal error is out of reach.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from types import TracebackType
from typing import Any, Optional, TextIO, Type

import structlog

from regagent.throttle import LogThrottle

EVERY = 60.0  # seconds between two lines of the same kind
FRAMES = 4  # innermost frames named in `at`


def describe(exc: Optional[BaseException]) -> str:
    """`Type: message`, on one line and short."""
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def frames(tb: Optional[TracebackType]) -> str:
    """The innermost frames on one line, outermost first: `file:line in function > ...`."""
    if tb is None:
        return ""
    summary = traceback.extract_tb(tb)[-FRAMES:]
    return " > ".join(f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in summary)


def _short(path: str) -> str:
    for marker in ("/regagent/", "/site-packages/", "/dist-packages/", "/lib/python"):
        at = path.rfind(marker)
        if at >= 0:
            return path[at + 1 :]
    return path


class _ToStructlog(logging.Handler):
    """Standard `logging` records (from libraries) as throttled structlog lines."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__(logging.WARNING)
        self.throttle = throttle

    def emit(self, record: logging.LogRecord) -> None:
        try:
            suppressed = self.throttle.admit(("library_log", record.name, str(record.msg)))
            if suppressed is None:
                return
            level = "error" if record.levelno >= logging.ERROR else "warning"
            message = " ".join(record.getMessage().split())[:300]
            getattr(structlog.get_logger("regagent.library"), level)(
                "library_log", logger=record.name, message=message, suppressed=suppressed
            )
        except Exception:  # a logging handler must never raise
            pass


class StderrGuard:
    """The hooks `install` sets; holds the throttle they share and what they replaced."""

    def __init__(self, throttle: Optional[LogThrottle] = None) -> None:
        self.throttle = throttle or LogThrottle(EVERY)
        self.handler = _ToStructlog(self.throttle)
        self.log = structlog.get_logger("regagent.python")

    def _say(self, level: str, event: str, kind: Any, **fields: Any) -> None:
        suppressed = self.throttle.admit((event, kind))
        if suppressed is not None:
            getattr(self.log, level)(event, **fields, suppressed=suppressed)

    def thread_crashed(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return  # as Python's own hook: a thread may end itself that way
        where = frames(args.exc_traceback)
        name = args.thread.name if args.thread is not None else "unknown"
        self._say(
            "error",
            "thread_crashed",
            (args.exc_type.__name__, where),
            thread=name,
            error=describe(args.exc_value),
            at=where,
        )

    def unraisable(self, unraisable: Any) -> None:
        where = frames(unraisable.exc_traceback)
        self._say(
            "warning",
            "unraisable_exception",
            (unraisable.exc_type.__name__, where),
            error=describe(unraisable.exc_value),
            context=" ".join(str(unraisable.err_msg or "").split())[:120],
            at=where,
        )

    def warning(  # noqa: PLR0917 (warnings.showwarning's signature)
        self,
        message: Any,
        category: Type[Warning],
        filename: str,
        lineno: int,
        file: Optional[TextIO] = None,
        line: Optional[str] = None,
    ) -> None:
        where = f"{_short(filename)}:{lineno}"
        self._say(
            "warning",
            "python_warning",
            (category.__name__, where),
            category=category.__name__,
            message=" ".join(str(message).split())[:300],
            at=where,
        )

    def crashed(
        self,
        exc_type: Type[BaseException],
        exc: BaseException,
        tb: Optional[TracebackType],
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self.log.info("interrupted")
            return
        self.log.critical("crashed", error=describe(exc), at=frames(tb))


def install(guard: Optional[StderrGuard] = None) -> StderrGuard:
    """Sets the hooks for the whole process (idempotent: a second call replaces the first's)."""
    guard = guard or StderrGuard()
    threading.excepthook = guard.thread_crashed
    sys.unraisablehook = guard.unraisable
    warnings.showwarning = guard.warning
    sys.excepthook = guard.crashed
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(guard.handler)
    return guard
