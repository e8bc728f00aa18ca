"""What a Consul server's answer or failure means: retry elsewhere, refuse, or wait for a leader.

Inside a pool call, everything a server can do wrong raises a `ConsulError` (an error answer,
an answer of the wrong shape, no usable answer at all); anything else raised there is a bug.
One line per failure, in words an operator can act on.
"""

from __future__ import annotations

import re
import ssl
import unicodedata
from enum import Enum
from typing import Optional, Tuple

from regagent.errors import RegagentError


class Outcome(Enum):
    """What one request to one server came to, as the pool judges it. The values are the
    `outcome` label of `regagent_consul_rpc_requests_total`."""

    SUCCESS = "success"
    FAILURE = "failure"  # no usable answer (connection, timeout, 5xx, 429/503): cooled down
    NO_LEADER = "no_leader"  # answered, but its cluster has no leader: not the server's fault
    REFUSED = "refused"  # a refusal every server would repeat (4xx, a validation error)


class ConsulError(Exception):
    """What a server's answer, or its absence, raises inside a pool call."""


class ErrorAnswer(ConsulError):
    """A 4xx or 5xx answer (404, 429 and 503 are judged before): its status and body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


class UnexpectedAnswer(ConsulError):
    """The server answered, but not as a Consul API would (404 page, HTML, wrong JSON shape):
    a misconfigured address or a proxy in the way. Treated like a failed server."""


class ServerFailed(ConsulError):
    """No usable answer from this server (refused, timed out, too slow, too large, TLS): the
    message is the one-line reason. Treated like a failed server: cool down, fail over."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class BadRequestHeader(RegagentError):
    """A request header regagent itself cannot send (a token with a line break or a character
    outside latin-1): a local mistake, so no server is blamed or cooled down, and the header's
    value is never quoted (it may be the token)."""

    exit_code = 2


class ServerBusy(UnexpectedAnswer):
    """429 or 503: this server, now (rate limit, overload, shutting down). Consul's own rate
    limiter answers 429 on the server that is over its limit and 503 when a server is not ready;
    another server may well answer. `retry_after` is the server's Retry-After, if any."""

    def __init__(self, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# Consul answers a request it rejects on validation with 500, not 400 (consul-api.md 1.1):
# these are the request's fault, so another server would refuse it too.
_VALIDATION_ERRORS = (
    "Invalid Service Meta",
    "Invalid service address",
    "Invalid check",
    "Must provide",
    "Missing service registration",
    "Unknown service ID",
    "Unknown check ID",
    "Bad node ID",
    "doesn't match register request node",
)


# OpenSSL's "[SSL: REASON_CODE] text (_ssl.c:1006)" without the codes around the text.
_SSL_TEXT = re.compile(r"^(?:\[[^\]]*\]\s*)?(?P<text>.*?)(?:\s*\(_ssl\.c:\d+\))?$")

# Alerts a server sends about the client certificate, in words a person can act on.
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says the client certificate has expired",
}


def describe_ssl(err: ssl.SSLError) -> str:
    """`TLS error: <what>` in OpenSSL's words, minus its codes, with a hint for alerts."""
    if isinstance(err, ssl.SSLCertVerificationError):
        detail = str(err.verify_message or "").rstrip(".")
        return "TLS error: certificate verify failed" + (f" ({detail})" if detail else "")
    if isinstance(err, ssl.SSLEOFError):
        return "TLS error: the server closed the connection unexpectedly (EOF during TLS)"
    raw = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], str) else str(err)
    match = _SSL_TEXT.match(raw.strip())
    text = match.group("text") if match else raw.strip()
    hint = _CLIENT_CERT_ALERTS.get(str(getattr(err, "reason", "") or ""))
    return f"TLS error: {hint} ({text})" if hint else f"TLS error: {text}"


def describe_failure(exc: BaseException) -> str:
    """One line: what went wrong talking to a server."""
    if isinstance(exc, ServerFailed):
        return exc.reason
    if isinstance(exc, ssl.SSLError):
        return describe_ssl(exc)
    if isinstance(exc, OSError):
        return "connection refused" if "Connection refused" in str(exc) else "connection failed"
    return one_line(str(exc))


def one_line(text: str, limit: int = 200) -> str:
    """An error body fit for one log line: an HTML error page (or a hostile body with terminal
    escapes) must not flood the log or the terminal. Whitespace folds to single spaces, any
    other control or format character becomes `?`, and the result is cut to `limit`."""
    folded = " ".join(text[: limit * 4].split())
    clean = "".join("?" if unicodedata.category(c)[0] == "C" else c for c in folded)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


REFUSAL_MAX = 300  # characters of Consul's refusal text kept in an error message

# Consul's answer (500, structs.ErrNoDCPath) when `?dc=` or a write's `Datacenter` names a
# datacenter no server knows: a configuration mistake that every server repeats, not a failure.
UNKNOWN_DATACENTER = "No path to datacenter"


def is_no_leader(exc: BaseException) -> bool:
    return isinstance(exc, ErrorAnswer) and "No cluster leader" in exc.body


def classify_refusal(
    exc: BaseException, datacenter: Optional[str] = None
) -> Optional[Tuple[int, str]]:
    """(status, Consul's message) for an answer another server would repeat (a 4xx, a 500
    validation error, an unknown datacenter), else None."""
    found = _refusal(exc)
    if found is None:
        return None
    status, message = found[0], one_line(found[1], REFUSAL_MAX)
    if UNKNOWN_DATACENTER in message:
        named = f"'{one_line(datacenter, 64)}'" if datacenter else "it names"
        message = (
            f"{message}: no server of this cluster knows the datacenter {named} "
            "(check consul.datacenter, or leave it unset for the servers' own)"
        )
    return status, message


def _refusal(exc: BaseException) -> Optional[Tuple[int, str]]:
    if not isinstance(exc, ErrorAnswer):
        return None
    if 400 <= exc.status < 500 or any(
        text in exc.body for text in (*_VALIDATION_ERRORS, UNKNOWN_DATACENTER)
    ):
        return exc.status, exc.body
    return None
