"""One bounded HTTP GET for everything regagent asks of a local service: the discovery probe
and the health checks both go through `bounded_get`.

Bounded on both axes (design decision 11): every blocking call on the socket ends by the overall
deadline (`regagent.deadline`), whatever the server does (silent, dripping headers, dripping
body), and at most `max_bytes` of the body are read.

Failure texts come from `describe_error`, the one vocabulary for "what went wrong" that check
output and discovery reports share. They are stable (no timings, no addresses that vary), since
they end up in check output, and an unchanged output costs no Consul write.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from regagent.deadline import Deadline

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What a GET brought back, the body cut at `max_bytes`."""

    status: int
    content_type: str
    body: bytes
    truncated: bool


class GetFailed(Exception):
    """The GET got no usable answer; `reason` is stable text from `describe_error`."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def describe_error(exc: BaseException) -> str:
    """One short, stable phrase for a failed local HTTP or TCP exchange."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "not HTTP (closed without a response)"
    if isinstance(exc, http.client.BadStatusLine):
        return "not HTTP (bad status line)"
    if isinstance(exc, http.client.HTTPException):
        return f"not HTTP ({type(exc).__name__})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The message text carries the C source line (`_ssl.c:1006`), which changes with Python.
        detail = exc.verify_message
        return f"certificate verify failed ({detail})" if detail else "certificate verify failed"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({(exc.reason or type(exc).__name__).lower().replace('_', ' ')})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def tls_context(verify: bool) -> ssl.SSLContext:
    """The client context of a GET. Verifying loads the system's CA store (about 25 ms): a
    caller that GETs every cycle builds it once and passes it on (`bounded_get`'s `context`).
    Not verifying (identification only: local exporters commonly use self-signed
    certificates) needs no CA store at all."""
    if verify:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def bounded_get(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Optional[Mapping[str, str]] = None,
    verify: bool = True,
    context: Optional[ssl.SSLContext] = None,
) -> Answer:
    """GET `url` within `timeout` overall, reading at most `max_bytes` of the body; over
    https with `context` when given, else with `tls_context(verify)`.

    Raises GetFailed. http.client ignores proxy settings: the GET goes straight to the service.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    deadline = Deadline(timeout)
    if scheme != "https":
        context = None
    elif context is None:
        context = tls_context(verify)
    conn = deadline.connection(parts.hostname or "", port, timeout, context)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    sent: Dict[str, str] = {"Connection": "close", **(headers or {})}
    response: Optional[http.client.HTTPResponse] = None
    try:
        conn.connect()
        deadline.keep(conn.sock)
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        body, truncated = _read_body(response, max_bytes, deadline)
        return Answer(
            response.status, response.getheader("Content-Type", "") or "", body, truncated
        )
    except GetFailed:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.expired:  # whatever the call that ran into it raised
            raise GetFailed("timed out", timed_out=True) from None
        raise GetFailed(describe_error(exc)) from None
    finally:
        if response is not None:  # its file holds the socket past conn.close()
            response.close()
        conn.close()


def _read_body(
    response: http.client.HTTPResponse, max_bytes: int, deadline: Deadline
) -> Tuple[bytes, bool]:
    if max_bytes <= 0:  # the status line is all the caller wants
        return b"", False
    chunks: List[bytes] = []
    size = 0
    while True:
        if deadline.expired:
            raise GetFailed("timed out", timed_out=True)
        chunk = response.read(min(_CHUNK, max_bytes - size + 1))
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
