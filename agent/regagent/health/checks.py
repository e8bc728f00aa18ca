"""Health checks run on the host (Consul never runs catalog checks, design decision 5).

Output text is stable on purpose: no latencies, no timestamps, so an unchanged result is an
unchanged check and costs no Consul write. `FlapGuard` holds the last good result through a few
consecutive failures, so one slow answer does not flip a target to critical and back.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Generic, Hashable, Iterable, List, Tuple, TypeVar

from regagent.discovery.probe import abort_connection
from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe

Result = Tuple[str, str]  # (status, output)
K = TypeVar("K", bound=Hashable)

# Consecutive critical results before a target that was passing is reported critical. To become
# the config knob sync.failures_before_critical (>= 1; 1 reports the first failure).
FAILURES_BEFORE_CRITICAL = 3


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return "not an HTTP answer"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The message text carries the C source line (`_ssl.c:1006`), which changes with Python.
        detail = exc.verify_message
        return f"certificate verify failed ({detail})" if detail else "certificate verify failed"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({(exc.reason or type(exc).__name__).lower().replace('_', ' ')})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _status_of(url: str, timeout: float) -> int:
    """The HTTP status of a GET, within `timeout` overall: a watchdog closes the socket, so a
    server that trickles its answer a byte at a time cannot hold the cycle (or SIGTERM).
    http.client ignores proxy settings: the check goes straight to the service."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    watchdog = threading.Timer(timeout, abort_connection, args=(conn,))
    watchdog.daemon = True
    watchdog.start()
    deadline = time.monotonic() + timeout
    try:
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", path, headers={"User-Agent": "regagent-check", "Connection": "close"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:  # the watchdog's close shows up as either
        if time.monotonic() >= deadline:
            raise socket.timeout("timed out") from None
        raise exc from None
    finally:
        watchdog.cancel()
        conn.close()


def http_check(url: str, timeout: float) -> Result:
    """2xx passing, 429 warning, anything else critical: Consul's own HTTP check rules."""
    try:
        code = _status_of(url, timeout)
    except Exception as exc:  # any failure to get an answer is a failed check
        return CRITICAL, f"HTTP GET {url}: {_reason(exc)}"
    status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
    return status, f"HTTP GET {url}: {code} {http.client.responses.get(code, '')}".rstrip()


def tcp_check(target: str, timeout: float) -> Result:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return CRITICAL, f"TCP connect {target}: {_reason(exc)}"
    return PASSING, f"TCP connect {target}: success"


def run_probe(probe: HealthProbe) -> Result:
    if probe.kind == "http":
        return http_check(probe.target, probe.timeout)
    return tcp_check(probe.target, probe.timeout)


def run_probes(probes: List[HealthProbe], workers: int = 8) -> Dict[HealthProbe, Result]:
    """All probes concurrently, so one slow service does not delay the cycle by its timeout each."""
    unique = list(dict.fromkeys(probes))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as executor:
        return dict(zip(unique, executor.map(run_probe, unique)))


class FlapGuard(Generic[K]):
    """Reports a check critical only after consecutive failures (design decision 5).

    Each flip costs a Consul write and a health flap in Prometheus service discovery, and a busy
    exporter misses a 2 s deadline now and then. Until `failures_before_critical` results in a
    row are critical, the last good result for the key stands. A guard that has seen no good
    result for a key (a one-shot `regagent sync` is a new process) reports failures at once.
    """

    def __init__(self, failures_before_critical: int = FAILURES_BEFORE_CRITICAL) -> None:
        self.failures_before_critical = failures_before_critical
        self._failures: Dict[K, int] = {}
        self._last_good: Dict[K, Result] = {}

    def observe(self, key: K, result: Result) -> Result:
        """The result to report for `key` now that `result` was measured."""
        if result[0] != CRITICAL:
            self._failures.pop(key, None)
            self._last_good[key] = result
            return result
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        good = self._last_good.get(key)
        if good is None or count >= self.failures_before_critical:
            return result
        return good

    def remember(self, key: K, result: Result) -> None:
        """A good result known from elsewhere (what Consul shows after a daemon restart), so
        the first failure after a restart is held back like any other."""
        if result[0] != CRITICAL:
            self._last_good.setdefault(key, result)

    def failures(self, key: K) -> int:
        """Consecutive critical results observed for `key`."""
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """No hold for `key` next time (it failed in a way that must show at once)."""
        self._failures.pop(key, None)
        self._last_good.pop(key, None)

    def retain(self, keys: Iterable[K]) -> None:
        """Drops what is known about any other key, so the guard stays as small as the host."""
        keep = set(keys)
        for table in (self._failures, self._last_good):
            for key in [k for k in table if k not in keep]:
                del table[key]


class HealthChecks:
    """`run_probes` through a FlapGuard, for a caller that lives across cycles (the daemon)."""

    def __init__(self, failures_before_critical: int = FAILURES_BEFORE_CRITICAL) -> None:
        self.guard: FlapGuard[HealthProbe] = FlapGuard(failures_before_critical)

    def run(self, probes: List[HealthProbe]) -> Dict[HealthProbe, Result]:
        """Every probe's result, a recent failure of a passing one held as its last good one."""
        results = run_probes(probes)
        self.guard.retain(results)
        return {probe: self.guard.observe(probe, result) for probe, result in results.items()}
