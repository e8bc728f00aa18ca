"""The HTTP client for one Consul server: every request bounded in time and size (design
decision 11), to exactly the configured server with exactly the configured TLS settings.

requests' timeouts apply to each `recv`, so a server dripping one byte a second, or sending an
endless 200 answer, held a sync for minutes or grew regagent to gigabytes. Here each request has:
- a connect timeout and a per-read timeout (a silent server: "no answer (read timed out)");
- an overall deadline that every blocking call on the socket keeps (`regagent.deadline`), so a
  drip in the status line, the headers or the body is cut too ("too slow: no complete answer
  within Ns");
- a cap on the answer's body ("answer too large (over N bytes)"), checked on Content-Length
  before reading and while reading.

It is built on `http.client` and `ssl`, which never look at proxy variables, `.netrc` or
`REQUESTS_CA_BUNDLE`, and `ConsulClient` reads no `CONSUL_HTTP_*` variable: the request goes to
the configured server with the configured TLS settings (CA file, client certificate, verify;
the system trust store when no CA file is given). One connection per request
(`Connection: close`): a deadline then holds exactly one socket, and no stale keep-alive
connection can turn into a spurious failure.

regagent once used python-consul2 here. What it still needed of that library (the request
target's quoting, the answer's shape, the leader call) is a few lines below and in
`regagent.consul.http`; not importing it keeps requests and urllib3 out of the daemon
(bench/footprint.py).
"""

from __future__ import annotations

import copy
import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from regagent.consul.answers import (
    BadRequestHeader,
    ErrorAnswer,
    ServerFailed,
    UnexpectedAnswer,
    describe_ssl,
)
from regagent.consul.resolve import BoundedResolver, NameResolutionTimeout, is_ip_literal
from regagent.consul.retry import MAX_ANSWER_BYTES
from regagent.deadline import Deadline

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
    """The client context for HTTPS to Consul (the pool's `Credentials` builds the one its
    clients share)."""
    context = ssl.create_default_context(cafile=options.ca_file or None)
    if not options.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.cert_file:
        context.load_cert_chain(options.cert_file, options.key_file or None)
    return context


class Response(NamedTuple):
    """One answer: status code, headers, body as text and as bytes."""

    code: int
    headers: http.client.HTTPMessage
    body: str
    content: bytes


Callback = Callable[[Response], Any]  # judges and parses an answer, inside the pool's call
Params = Optional[Sequence[Tuple[str, str]]]


class BoundedHTTPClient:
    """get/put/delete/post of one path on one server, each answer handed to a callback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        scheme: str = "http",
        *,
        limits: Optional[RequestLimits] = None,
        tls: Optional[TLSOptions] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.scheme = scheme
        self.limits = limits or RequestLimits()
        self.tls = tls or TLSOptions()
        # Built at the first HTTPS request, unless handed in before (`Credentials` gives every
        # client of a pool the one context it keeps): loading a CA store costs ~25 ms.
        self.context: Optional[ssl.SSLContext] = None
        self.resolve = None if is_ip_literal(host) else BoundedResolver(host, port)

    def get(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        return callback(self.request("GET", self.target(path, params), None, headers or {}))

    def put(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        data: Any = "",
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        return callback(self.request("PUT", self.target(path, params), _bytes(data), headers or {}))

    def delete(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        data: Any = "",
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        body = _bytes(data)
        return callback(self.request("DELETE", self.target(path, params), body, headers or {}))

    def post(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        headers: Optional[Mapping[str, str]] = None,
        data: Any = "",
    ) -> Any:
        body = _bytes(data)
        return callback(self.request("POST", self.target(path, params), body, headers or {}))

    def bounded_by(self, limits: RequestLimits) -> BoundedHTTPClient:
        """This client under other limits (a blocking read's longer bound), sharing its TLS
        context, built first so that the copy does not build its own."""
        self._tls_context()
        other = copy.copy(self)
        other.limits = limits
        return other

    def _tls_context(self) -> Optional[ssl.SSLContext]:
        if self.scheme != "https":
            return None
        if self.context is None:  # two threads may both build one: either serves
            self.context = tls_context(self.tls)
        return self.context

    @staticmethod
    def target(path: str, params: Params) -> str:
        """The request target: the path quoted (`/` and `:` kept), then the query string.
        `path` is given unencoded (a service ID as it is): quoted here once, never by callers."""
        quoted = urllib.parse.quote(path, safe="/:")
        return f"{quoted}?{urllib.parse.urlencode(params)}" if params else quoted

    def request(
        self, method: str, target: str, body: Optional[bytes], headers: Mapping[str, str]
    ) -> Response:
        """One bounded exchange; raises ServerFailed with a one-line reason."""
        limits = self.limits
        deadline = Deadline(limits.deadline, limits.read_timeout)
        conn = deadline.connection(
            self.host, self.port, limits.connect_timeout, self._tls_context(), self.resolve
        )
        phase = "connect"
        response: Optional[http.client.HTTPResponse] = None
        try:
            conn.connect()
            deadline.keep(conn.sock)
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
            content = _read_body(response, limits.max_bytes)
            text = content.decode("utf-8", errors="replace")
            return Response(response.status, response.msg, text, content)
        except (ServerFailed, BadRequestHeader):
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if deadline.expired:  # whatever the call that ran into it raised
                raise ServerFailed(_too_slow(limits.deadline), timed_out=True) from None
            raise ServerFailed(
                _describe(exc, phase), timed_out=isinstance(exc, socket.timeout)
            ) from None
        finally:
            if response is not None:  # its file holds the socket past conn.close()
                response.close()
            conn.close()


class ConsulClient:
    """One server's client: its bounded HTTP client, the token and the datacenter every request
    of regagent's carries (`regagent.consul.http` adds them), and the leader call of `status`."""

    def __init__(
        self, http: BoundedHTTPClient, token: Optional[str] = None, dc: Optional[str] = None
    ) -> None:
        self.http = http
        self.token = token
        self.dc = dc

    def leader(self) -> Any:
        """The cluster leader's address as this server knows it ("" for none; None for a
        404, which no Consul server answers)."""
        return self.http.get(_leader, "/v1/status/leader")


def _leader(response: Response) -> Any:
    if response.code == 404:
        return None
    if 400 <= response.code < 600:
        raise ErrorAnswer(response.code, response.body)
    try:
        return json.loads(response.body)
    except ValueError:
        raise UnexpectedAnswer("answer is not JSON (is this a Consul server?)") from None


def _bytes(data: Any) -> Optional[bytes]:
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode("utf-8")


def _too_slow(deadline: float) -> str:
    return f"too slow: no complete answer within {deadline:g}s"


def _too_large(max_bytes: int) -> str:
    return f"answer too large (over {max_bytes} bytes)"


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ServerFailed(_too_large(max_bytes))
    chunks: List[bytes] = []
    size = 0
    while True:
        chunk = response.read(min(_CHUNK, max_bytes - size + 1))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise ServerFailed(_too_large(max_bytes))


def _describe(exc: BaseException, phase: str) -> str:
    """One line, in the words `describe_failure` uses for every failed exchange."""
    if isinstance(exc, NameResolutionTimeout):
        return "connection failed (name resolution timed out)"
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
