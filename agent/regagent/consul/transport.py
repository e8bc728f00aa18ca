"""The HTTP transport under python-consul2: every request to a Consul server bounded in time and
size (design decision 11).

requests' timeouts apply to each `recv`, so a server dripping one byte a second, or sending an
endless 200 answer, held a sync for minutes or grew regagent to gigabytes. Here each request has:
- a connect timeout and a per-read timeout (a silent server: "no answer (read timed out)");
- an overall deadline, enforced by a watchdog that shuts the socket down, so a drip in the
  status line, the headers or the body is cut too ("too slow: no complete answer within Ns");
- a cap on the answer's body ("answer too large (over N bytes)"), checked on Content-Length
  before reading and while reading.

It is built on `http.client` and `ssl`, which never look at proxy variables, `.netrc` or
`REQUESTS_CA_BUNDLE`: the request goes to exactly the configured server with exactly the
configured TLS settings (CA file, client certificate, verify; the system trust store when no CA
file is given). python-consul2 keeps what it still earns: its `Consul` API wrappers
(`status.leader()`, `txn`, ...), its callbacks and its typed exceptions for 4xx/5xx answers; this
module replaces only its requests-based `HTTPClient`. One connection per request
(`Connection: close`): a watchdog then owns exactly one socket, and no stale keep-alive
connection can turn into a spurious failure.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from consul import base

from regagent.consul.answers import BadRequestHeader, ServerFailed, describe_ssl
from regagent.consul.retry import MAX_ANSWER_BYTES
from regagent.watchdog import SocketWatchdog

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """The bounds of one request: see the module docstring."""

    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    deadline: float = 12.0
    max_bytes: int = MAX_ANSWER_BYTES


@dataclass(frozen=True)
class TLSOptions:
    """What `consul.tls` configures: verify (with an optional CA file) and a client cert."""

    verify: bool = True
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None


def tls_context(options: TLSOptions) -> ssl.SSLContext:
    """The client context for HTTPS to Consul; built once per server."""
    context = ssl.create_default_context(cafile=options.ca_file or None)
    if not options.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.cert_file:
        context.load_cert_chain(options.cert_file, options.key_file or None)
    return context


class BoundedHTTPClient(base.HTTPClient):  # type: ignore[misc]
    """python-consul2's HTTPClient interface (get/put/delete/post with a callback), bounded."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        scheme: str = "http",
        verify: Union[bool, str] = True,
        cert: Any = None,
        *,
        limits: Optional[RequestLimits] = None,
        tls: Optional[TLSOptions] = None,
    ) -> None:
        super().__init__(host, port, scheme, verify, cert, None)
        self.limits = limits or RequestLimits()
        self.context = tls_context(tls or TLSOptions()) if scheme == "https" else None

    def get(
        self,
        callback: Callable[[base.Response], Any],
        path: str,
        params: Any = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        return callback(self.request("GET", self.target(path, params), None, headers or {}))

    def put(
        self,
        callback: Callable[[base.Response], Any],
        path: str,
        params: Any = None,
        data: Any = "",
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        return callback(self.request("PUT", self.target(path, params), _bytes(data), headers or {}))

    def delete(
        self,
        callback: Callable[[base.Response], Any],
        path: str,
        params: Any = None,
        data: Any = "",
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        body = _bytes(data)
        return callback(self.request("DELETE", self.target(path, params), body, headers or {}))

    def post(
        self,
        callback: Callable[[base.Response], Any],
        path: str,
        params: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        data: Any = "",
    ) -> Any:
        body = _bytes(data)
        return callback(self.request("POST", self.target(path, params), body, headers or {}))

    def target(self, path: str, params: Any) -> str:
        """The request target, quoted exactly as python-consul2 quotes it."""
        uri: str = self.uri(path, params)
        return uri[len(self.base_uri) :]

    def _connection(self) -> http.client.HTTPConnection:
        timeout = min(self.limits.connect_timeout, self.limits.deadline)
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, context=self.context
        )

    def request(
        self, method: str, target: str, body: Optional[bytes], headers: Mapping[str, str]
    ) -> base.Response:
        """One bounded exchange; raises ServerFailed with a one-line reason."""
        limits = self.limits
        conn = self._connection()
        watchdog = SocketWatchdog(limits.deadline)
        phase = "connect"
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(limits.read_timeout)
            watchdog.hold(conn.sock)
            phase = "request"
            sent: Dict[str, str] = {"Connection": "close", **headers}
            if body is not None:
                sent.setdefault("Content-Type", "application/json")
            try:
                conn.request(method, target, body=body, headers=sent)
            except ValueError:
                # http.client refuses a header value with CR/LF (and one it cannot encode); its
                # message quotes the value, which may be the token: never repeat it.
                raise BadRequestHeader(
                    "cannot send the request: a header is invalid; the Consul token must be "
                    "one line of printable ASCII (its value is not shown)"
                ) from None
            phase = "answer"
            response = conn.getresponse()
            content = _read_body(response, limits.max_bytes, watchdog)
            text = content.decode("utf-8", errors="replace")
            return base.Response(response.status, response.msg, text, content)
        except (ServerFailed, BadRequestHeader):
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # The watchdog's shutdown shows up as any of these: report it as what it was.
            if watchdog.fired:
                raise ServerFailed(_too_slow(limits.deadline), timed_out=True) from None
            raise ServerFailed(
                _describe(exc, phase), timed_out=isinstance(exc, socket.timeout)
            ) from None
        finally:
            watchdog.cancel()
            conn.close()


def _bytes(data: Any) -> Optional[bytes]:
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode("utf-8")


def _too_slow(deadline: float) -> str:
    return f"too slow: no complete answer within {deadline:g}s"


def _too_large(max_bytes: int) -> str:
    return f"answer too large (over {max_bytes} bytes)"


def _read_body(
    response: http.client.HTTPResponse, max_bytes: int, watchdog: SocketWatchdog
) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ServerFailed(_too_large(max_bytes))
    chunks: List[bytes] = []
    size = 0
    while True:
        chunk = response.read(min(_CHUNK, max_bytes - size + 1))
        if not chunk:
            if watchdog.fired:  # cut off by the deadline: not a complete answer
                raise ServerFailed(_too_slow(watchdog.timeout), timed_out=True)
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise ServerFailed(_too_large(max_bytes))


def _describe(exc: BaseException, phase: str) -> str:
    """One line, in the words `describe_failure` has always used for the requests transport."""
    if isinstance(exc, socket.timeout):
        return "connect timed out" if phase == "connect" else "no answer (read timed out)"
    if isinstance(exc, ssl.SSLError):
        return describe_ssl(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "connection closed before a complete answer"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "connection failed (name does not resolve)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection failed ({exc.strerror.lower()})"
    return "connection failed"
