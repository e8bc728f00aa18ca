"""Consul's session API, as the dead-man's switch uses it (`regagent.consul.deadman`).

Each call goes through a `ServerPool` (failover, cool-downs, bounded answers) and judges the
answer inside the pool's call, so that what is the server's fault cools that server down and
what is an answer is returned:
- a renew of an unknown session is 404 `Session id '<id>' not found`: an answer (the session is
  gone), not a broken server;
- Consul refuses a session it cannot create with 500 and a validation text (`Missing node
  registration`, `Invalid Session TTL ...`); every server would say the same, so it is raised
  as `SessionRefused` without cooling anyone down.

Facts from Consul's sources (agent/session_endpoint.go, agent/consul/session_endpoint.go,
session_ttl.go): create defaults `NodeChecks` to `["serfHealth"]`, which an external node does
not have (500 `Missing check 'serfHealth' registration`), so regagent sends `"NodeChecks": []`;
a renew is forwarded to the leader and resets its timer (no Raft write); the leader invalidates
a session 2 x TTL after its last renew; destroying an unknown session answers 200.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from regagent.consul.answers import UnexpectedAnswer, one_line
from regagent.consul.http import canonical_json, checked_response, get_json, put_raw
from regagent.consul.pool import ServerPool
from regagent.errors import RegagentError
from regagent.rules import go_duration

# Texts of Consul's refusals of a session (Session.Apply and the state store), which another
# server would repeat; a follower prefixes them with "rpc error making call: ".
SESSION_REFUSALS = (
    "Missing node registration",
    "Missing check",
    "is in critical state",
    "Invalid Session TTL",
    "Session TTL",
    "Invalid Behavior",
    "Must provide Node",
)
_NOT_FOUND = "Session id '"


class SessionRefused(RegagentError):
    """Consul refused to create the session (the node is missing, the TTL is out of the
    servers' bounds): the message says why, in Consul's words."""


@dataclass(frozen=True)
class _Refusal:
    text: str


def _params(datacenter: Optional[str]) -> Optional[List[Tuple[str, str]]]:
    return [("dc", datacenter)] if datacenter else None


def _judged(response: Any, path: str) -> Any:
    """Inside the pool's call: the decoded answer, a `_Refusal`, or None for 404-not-found."""
    body = response.body or ""
    if response.code == 404 and body.startswith(_NOT_FOUND):
        return None
    if response.code == 500 and any(text in body for text in SESSION_REFUSALS):
        return _Refusal(one_line(body))
    checked_response(response)
    try:
        return json.loads(body)
    except ValueError:
        raise UnexpectedAnswer(f"{path} answer is not JSON (is this a Consul server?)") from None


def create_session(
    pool: ServerPool, node: str, name: str, ttl: float, datacenter: Optional[str]
) -> str:
    """A new session on `node` named `name`, with a TTL and no checks; its ID."""
    path = "/v1/session/create"
    body: Dict[str, Any] = {
        "Node": node,
        "Name": name,
        "TTL": go_duration(ttl),
        "NodeChecks": [],  # not serfHealth: an external node has none
        "Behavior": "delete",  # regagent holds no KV; nothing is released either way
        "LockDelay": "0s",
    }
    data = canonical_json(body)

    def create(client: Any) -> Any:
        return _judged(put_raw(client, path, data, _params(datacenter)), path)

    answer = pool.call(f"create session {name}", create)
    if isinstance(answer, _Refusal):
        raise SessionRefused(f"Consul refused the session for node {node!r}: {answer.text}")
    if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str) or not answer["ID"]:
        raise SessionRefused(f"{path} answered without a session ID: {one_line(str(answer))}")
    return str(answer["ID"])


def renew_session(pool: ServerPool, session_id: str, datacenter: Optional[str]) -> bool:
    """Resets the leader's timer of the session; False when Consul no longer has it."""
    path = f"/v1/session/renew/{session_id}"

    def renew(client: Any) -> Any:
        answer = _judged(put_raw(client, path, "", _params(datacenter)), path)
        if answer is not None and not isinstance(answer, list):
            raise UnexpectedAnswer(f"{path} answered a JSON {type(answer).__name__}, not a list")
        return answer

    answer = pool.call("renew session", renew)
    return bool(answer)  # None (404) or [] (no session): gone


def destroy_session(pool: ServerPool, session_id: str, datacenter: Optional[str]) -> None:
    """Destroys the session (200 also when it is already gone)."""
    path = f"/v1/session/destroy/{session_id}"
    pool.call("destroy session", lambda c: _judged(put_raw(c, path, "", _params(datacenter)), path))


def node_sessions(pool: ServerPool, node: str) -> List[Tuple[str, str]]:
    """(ID, Name) of every session on `node`, read through the leader."""
    path = f"/v1/session/node/{node}"

    def read(client: Any) -> List[Tuple[str, str]]:
        data = get_json(client, path, list).data or []
        return [(str(s["ID"]), str(s.get("Name") or "")) for s in data]

    result: List[Tuple[str, str]] = pool.call("read node sessions", read)
    return result


def node_check(pool: ServerPool, node: str, check_id: str) -> Optional[Dict[str, Any]]:
    """One check of `node` as `/v1/health/node/<node>` shows it (through the leader, so a
    write just made is there), or None."""
    path = f"/v1/health/node/{node}"

    def read(client: Any) -> Optional[Dict[str, Any]]:
        for raw in get_json(client, path, list).data or []:
            if isinstance(raw, dict) and raw.get("CheckID") == check_id:
                return raw
        return None

    found: Optional[Dict[str, Any]] = pool.call("read back the session check", read)
    return found
