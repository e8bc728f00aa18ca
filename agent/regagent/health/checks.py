"""Health checks run on the host (Consul never runs catalog checks, design decision 5).

Output text is stable on purpose: no latencies, no timestamps, so an unchanged result is an
unchanged check and costs no Consul write. Flap protection is `regagent.health.flap`.

The checks of a cycle run at once: TCP connects to an address all together in the calling
thread (non-blocking connects and one wait, `tcp_checks`, at most TCP_BATCH sockets at a time),
every other probe on threads
(`run_all`). Twenty TCP checks handed to eight threads cost more CPU than the connects
themselves (bench/footprint.py).
"""

from __future__ import annotations

import errno
import http.client
import os
import selectors
import socket
import ssl
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

from regagent.health.http import GetFailed, bounded_get, describe_error, tls_context
from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe, Result
from regagent.threads import signals_blocked

USER_AGENT = "regagent-check"
WORKERS = 8  # checks run at once, so one slow service does not delay the others by its timeout
# TCP connects in flight at once: well under systemd's default soft limit of 1024 descriptors
TCP_BATCH = 256
_CHECK_BODY_BYTES = 0  # the check judges the status line only, as Consul's HTTP check does


def http_check(url: str, timeout: float, context: Optional[ssl.SSLContext] = None) -> Result:
    """2xx passing, 429 warning, anything else critical: Consul's own HTTP check rules.
    `context`: the verifying TLS context to reuse (one is built per call without it)."""
    try:
        answer = bounded_get(
            url,
            timeout=timeout,
            max_bytes=_CHECK_BODY_BYTES,
            headers={"User-Agent": USER_AGENT},
            context=context,
        )
    except GetFailed as exc:
        return CRITICAL, f"HTTP GET {url}: {exc.reason}"
    code = answer.status
    status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
    return status, f"HTTP GET {url}: {code} {http.client.responses.get(code, '')}".rstrip()


def tcp_check(target: str, timeout: float) -> Result:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return _tcp_failed(target, exc)
    return _tcp_passed(target)


def _tcp_passed(target: str) -> Result:
    return PASSING, f"TCP connect {target}: success"


def _tcp_failed(target: str, exc: BaseException) -> Result:
    return CRITICAL, f"TCP connect {target}: {describe_error(exc)}"


def run_probe(probe: HealthProbe, context: Optional[ssl.SSLContext] = None) -> Result:
    if probe.kind == "http":
        return http_check(probe.target, probe.timeout, context)
    return tcp_check(probe.target, probe.timeout)


def _tcp_address(probe: HealthProbe) -> Optional[Tuple[socket.AddressFamily, Tuple[str, int]]]:
    """(family, address) of a TCP probe of an IP address; None for a host name (or a scoped
    IPv6 address), which `tcp_check` resolves and tries address by address as
    `socket.create_connection` does."""
    if probe.kind != "tcp":
        return None
    host, _, port = probe.target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, int(port))
    return None


def tcp_checks(
    probes: Sequence[HealthProbe],
    clock: Callable[[], float] = time.monotonic,
    batch: int = TCP_BATCH,
) -> Dict[HealthProbe, Result]:
    """TCP probes of IP addresses, all at once in the calling thread: each passes once its
    connect completes, fails as `tcp_check` would say, or times out after its own timeout.

    At most `batch` sockets are open at a time, and fewer when the process runs out of
    descriptors: the rest wait for the next batch. A socket call that fails (no descriptor left
    with nothing else in flight, an address family the host does not have) fails that probe
    alone, as `tcp_check` would."""
    for probe in probes:
        if _tcp_address(probe) is None:
            raise ValueError(f"not a TCP probe of an address: {probe.target}")
    results: Dict[HealthProbe, Result] = {}
    waiting = list(probes)
    while waiting:  # each pass starts at least one probe or settles it: bounded by len(probes)
        with selectors.DefaultSelector() as selector:
            try:
                waiting = _start(waiting, batch, selector, results)
                _wait(selector, clock(), clock, results)
            finally:
                for key in list(selector.get_map().values()):
                    _forget(selector, key)
    return results


def _start(
    probes: List[HealthProbe],
    batch: int,
    selector: selectors.BaseSelector,
    results: Dict[HealthProbe, Result],
) -> List[HealthProbe]:
    """Starts the connects of up to `batch` probes (registered in `selector`, or settled in
    `results` at once); returns the probes left for a later batch."""
    for index, probe in enumerate(probes):
        if len(selector.get_map()) >= batch:
            return probes[index:]
        found = _tcp_address(probe)
        assert found is not None  # checked by tcp_checks
        sock: Optional[socket.socket] = None
        try:
            sock = socket.socket(found[0], socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(found[1])
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                selector.register(sock, selectors.EVENT_WRITE, probe)
                continue
        except OSError as exc:
            if sock is not None:
                sock.close()
            if exc.errno in (errno.EMFILE, errno.ENFILE) and selector.get_map():
                return probes[index:]  # out of descriptors: after those in flight
            results[probe] = _tcp_failed(probe.target, exc)
            continue
        sock.close()
        results[probe] = _connected(probe.target, code)
    return []


def _wait(
    selector: selectors.BaseSelector,
    started: float,
    clock: Callable[[], float],
    results: Dict[HealthProbe, Result],
) -> None:
    """Until every connect in `selector` completed or ran out of its probe's timeout."""
    while selector.get_map():
        waiting = [key.data.timeout for key in selector.get_map().values()]
        left = started + min(waiting) - clock()
        ready = selector.select(max(0.0, left)) if left > 0 else []
        for key, _ in ready:
            code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            _forget(selector, key)
            results[key.data] = _connected(key.data.target, code)
        now = clock()
        for key in list(selector.get_map().values()):
            if now - started >= key.data.timeout:
                _forget(selector, key)
                results[key.data] = _tcp_failed(key.data.target, socket.timeout())


def _connected(target: str, code: int) -> Result:
    if code == 0:
        return _tcp_passed(target)
    return _tcp_failed(target, OSError(code, os.strerror(code)))


def _forget(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    selector.unregister(key.fileobj)
    key.fileobj.close()  # type: ignore[union-attr]


def run_all(
    probes: Sequence[HealthProbe], submit: Callable[[HealthProbe], Future[Result]]
) -> Dict[HealthProbe, Result]:
    """Every probe once, concurrently: the TCP connects to an address here, all together,
    while `submit` runs the others (each on a thread)."""
    unique = list(dict.fromkeys(probes))
    at_once = [probe for probe in unique if _tcp_address(probe) is not None]
    futures = {probe: submit(probe) for probe in unique if probe not in at_once}
    results = tcp_checks(at_once)
    results.update((probe, future.result()) for probe, future in futures.items())
    return {probe: results[probe] for probe in unique}


class ProbePool:
    """Runs the probes of a cycle concurrently (`run_all`): the others than TCP connects to an
    address on threads kept for the next cycle, since starting eight threads every cycle cost
    more CPU than the checks themselves (bench/footprint.py).
    The threads start lazily, on the first probes, without the daemon's signals, which stay
    with the main thread (`regagent.threads`)."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="regagent-check"
        )
        # The HTTPS checks' verifying context, built on the first one (in the calling thread)
        # and kept: loading the CA store costs more than the check (`tls_context`).
        self._tls: Optional[ssl.SSLContext] = None

    def __call__(self, probes: List[HealthProbe]) -> Dict[HealthProbe, Result]:
        """Each distinct probe's result (a probe shared by two services runs once)."""
        return run_all(probes, self._submit)

    def _submit(self, probe: HealthProbe) -> Future[Result]:
        if self._tls is None and probe.kind == "http" and probe.target.startswith("https:"):
            self._tls = tls_context(verify=True)
        with signals_blocked():  # threads are started on the submits
            return self._executor.submit(run_probe, probe, self._tls)

    def close(self) -> None:
        """Ends the threads once their probes are done."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def run_probes(probes: List[HealthProbe], workers: int = WORKERS) -> Dict[HealthProbe, Result]:
    """All probes concurrently, once, on threads of their own that end with the call."""
    others = {probe for probe in probes if _tcp_address(probe) is None}
    with ProbePool(max(1, min(workers, len(others)))) as pool:
        return pool(probes)
