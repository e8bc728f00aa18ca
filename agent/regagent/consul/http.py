"""HTTP details shared by catalog and agent mode: strict answer checks and canonical writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import structlog

from regagent.consul.answers import ErrorAnswer, ServerBusy, UnexpectedAnswer, one_line
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import ApplyOutcome
from regagent.errors import ConsulRefused, RegagentError

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _headers(client: Any) -> Dict[str, str]:
    return {"X-Consul-Token": client.token} if client.token else {}


@dataclass(frozen=True)
class ReadAnswer:
    data: Any
    known_leader: bool
    index: int = 0  # X-Consul-Index (0: none, or not a number)


_BUSY = {429: "rate limited (429 Too Many Requests)", 503: "unavailable (503 Service Unavailable)"}


def retry_after(headers: Any) -> Optional[float]:
    """A Retry-After in seconds (the HTTP-date form is ignored), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def busy_check(response: Any) -> None:
    """429 and 503 mean "this server, now" (Consul's request rate limiter, an overloaded or
    starting server, a proxy in front): raise ServerBusy so the pool cools it down and moves on,
    instead of treating 429 as a refusal every server would repeat."""
    if response.code in _BUSY:
        body = one_line(response.body or "", 120)
        reason = _BUSY[response.code] + (f": {body}" if body else "")
        raise ServerBusy(reason, retry_after(response.headers))


def checked_response(response: Any) -> Any:
    """Raises ServerBusy for 429/503, UnexpectedAnswer for a 404 or another answer that is not
    200, ErrorAnswer for the other 4xx/5xx."""
    busy_check(response)
    if response.code == 404:
        if response.body.startswith(("Unknown service ID", "Unknown check ID")):
            return response  # deregistering what is already gone: done, as in the catalog API
        raise UnexpectedAnswer("404 Not Found (is this a Consul server?)")
    if 400 <= response.code < 600:
        raise ErrorAnswer(response.code, response.body)
    if response.code != 200:
        raise UnexpectedAnswer(f"{response.code} unexpected answer (is this a Consul server?)")
    return response


def read_answer(response: Any) -> ReadAnswer:
    checked_response(response)
    try:
        data = json.loads(response.body)
    except ValueError:
        raise UnexpectedAnswer("answer is not JSON (is this a Consul server?)") from None
    index = (response.headers.get("X-Consul-Index") or "").strip()
    known_leader = response.headers.get("X-Consul-KnownLeader") == "true"
    return ReadAnswer(data, known_leader, int(index) if index.isdigit() else 0)


def stale_get(
    client: Any, path: str, shape: type, more: Sequence[Tuple[str, str]] = ()
) -> ReadAnswer:
    """A stale read: any server answers from its replica, with or without a leader. `more`:
    other query parameters (a blocking read's `index` and `wait`)."""
    params: List[Tuple[str, str]] = [("stale", "1"), *more]
    if client.dc:
        params.append(("dc", client.dc))
    return get_json(client, path, shape, params)


def parsed(data: Any, parse: Callable[[Any], T], path: str) -> T:
    """`parse(data)` inside the pool's call: a well-formed answer of the wrong shape counts
    against the server that sent it (cool-down, failover), not against the cycle."""
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnexpectedAnswer(f"{path} answered a malformed document ({exc!r})") from None


def get_json(
    client: Any, path: str, shape: type, params: Optional[List[Tuple[str, str]]] = None
) -> ReadAnswer:
    """GET a JSON document of the expected shape, or raise UnexpectedAnswer (inside the pool's
    call, so the server that sent it is the one cooled down)."""
    answer: ReadAnswer = client.http.get(
        read_answer, path=path, params=params, headers=_headers(client)
    )
    if answer.data is not None and not isinstance(answer.data, shape):
        kind = type(answer.data).__name__
        raise UnexpectedAnswer(f"{path} answered a JSON {kind}, not a {shape.__name__}")
    return answer


def canonical_json(body: Any) -> str:
    """Sorted keys, no spaces: an identical desired state yields a byte-identical body."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _put(client: Any, path: str, body: Dict[str, Any]) -> None:
    data = canonical_json(body) if body else ""
    client.http.put(checked_response, path=path, data=data, headers=_headers(client))


def put_raw(
    client: Any, path: str, data: str, params: Optional[List[Tuple[str, str]]] = None
) -> Any:
    """A PUT whose answer the caller judges (after 429/503, which are always the server's)."""

    def judged(response: Any) -> Any:
        busy_check(response)
        return response

    return client.http.put(judged, path=path, params=params, data=data, headers=_headers(client))


@dataclass(frozen=True)
class WriteRequest:
    """One write, described for logs and dry-run JSON; `kind` counts it in the cycle report
    (node, register, update, status, deregister)."""

    path: str
    body: Dict[str, Any]
    what: str
    kind: str = "write"


def send(pool: ServerPool, request: WriteRequest) -> None:
    pool.call(request.what, lambda c: _put(c, request.path, request.body))


def send_all(pool: ServerPool, requests: Sequence[WriteRequest]) -> ApplyOutcome:
    """Sends the requests in order: a refused one is skipped (logged), a lost cluster stops.

    Everything written is idempotent: the next cycle re-plans and completes the rest.
    """
    outcome = ApplyOutcome(planned=len(requests))
    failures: List[RegagentError] = []
    for request in requests:
        try:
            send(pool, request)
        except ConsulRefused as exc:
            failures.append(exc)
            log.error("consul_write_refused", what=request.what, error=str(exc))
            continue
        except RegagentError as exc:
            failures.append(exc)
            break
        outcome.writes_by_kind[request.kind] = outcome.writes_by_kind.get(request.kind, 0) + 1
        outcome.requests += 1
        log.info("consul_write", what=request.what, server=pool.current_server.address)
    outcome.server = pool.current_server.address
    outcome.error = first_failure(failures, of=len(requests))
    return outcome


def first_failure(
    failures: Sequence[RegagentError], *, of: Optional[int] = None
) -> Optional[RegagentError]:
    """The one error a send reports: its only failure, or the first of several retold with
    their count. Its type stays the first's, so a refusal is counted as `refused`, not as
    `error`, and the exit code and STATUS= line are the first failure's."""
    if len(failures) <= 1:
        return failures[0] if failures else None
    total = f" of {of}" if of is not None else ""
    first = failures[0]
    return first.retold(f"{len(failures)}{total} writes failed; first: {first}")
