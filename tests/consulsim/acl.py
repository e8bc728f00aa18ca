"""Optional ACLs: tokens mapped to node/service/agent/session rules, with Consul's denial texts.

The rule model is the subset of Consul's policy language regagent and Prometheus need:
``node``, ``service``, ``agent`` and ``session`` resources, each with exact-name and prefix
rules and a ``read``/``write``/``deny`` policy. As in Consul, an exact rule beats any prefix
rule and the longest prefix wins. Configuration is JSON, e.g.::

    {"default_policy": "deny",
     "tokens": {"regagent-secret": {"AccessorID": "...",
                                    "node_prefix": {"": "write"},
                                    "service_prefix": {"": "write"}}},
     "anonymous": {"service_prefix": {"": "read"}}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_LEVELS = {"deny": 0, "read": 1, "write": 2}
RESOURCES = ("node", "service", "agent", "session")


class PermissionDenied(Exception):
    """An ACL denial; ``str()`` is the 403 body."""


class ACLNotFound(PermissionDenied):
    """A token secret nobody knows: Consul answers 403 ``ACL not found``."""

    def __init__(self) -> None:
        super().__init__("ACL not found")


@dataclass
class Policy:
    """Rules of one token: resource -> name -> level, and resource -> prefix -> level."""

    accessor: str
    exact: Dict[str, Dict[str, str]] = field(default_factory=dict)
    prefix: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, accessor: str, data: Dict[str, Any]) -> Policy:
        """Build from ``{"node": {...}, "node_prefix": {...}, ...}``."""
        policy = cls(accessor=str(data.get("AccessorID", accessor)))
        for resource in RESOURCES:
            policy.exact[resource] = {k: _level(v) for k, v in data.get(resource, {}).items()}
            policy.prefix[resource] = {
                k: _level(v) for k, v in data.get(f"{resource}_prefix", {}).items()
            }
        return policy

    def level(self, resource: str, name: str, default: str) -> str:
        """The effective level on ``resource:name``: exact rule, longest prefix, default."""
        exact = self.exact.get(resource, {})
        if name in exact:
            return exact[name]
        best: Optional[str] = None
        best_len = -1
        for prefix, level in self.prefix.get(resource, {}).items():
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = level, len(prefix)
        return best if best is not None else default


def _level(value: Any) -> str:
    text = str(value)
    if text not in _LEVELS:
        raise ValueError(f"unknown ACL policy level {text!r}")
    return text


class ACL:
    """Token resolution and permission checks; disabled unless configured."""

    def __init__(self) -> None:
        self.enabled = False
        self.default_policy = "deny"
        self.tokens: Dict[str, Policy] = {}
        self.anonymous = Policy(accessor=ANONYMOUS_ACCESSOR)

    def configure(self, data: Optional[Dict[str, Any]]) -> None:
        """Replace the whole configuration; ``None`` or ``{}`` turns ACLs off."""
        if not data:
            self.enabled = False
            self.tokens = {}
            self.anonymous = Policy(accessor=ANONYMOUS_ACCESSOR)
            return
        default = str(data.get("default_policy", "deny"))
        if default not in ("allow", "deny"):
            raise ValueError("default_policy must be allow or deny")
        tokens = {
            secret: Policy.from_json(secret, rules)
            for secret, rules in dict(data.get("tokens", {})).items()
        }
        anonymous = Policy.from_json(ANONYMOUS_ACCESSOR, dict(data.get("anonymous", {})))
        anonymous.accessor = ANONYMOUS_ACCESSOR
        self.enabled = True
        self.default_policy = default
        self.tokens = tokens
        self.anonymous = anonymous

    def resolve(self, secret: str) -> Optional[Policy]:
        """The policy for a request's token; None when ACLs are off. Unknown → ACLNotFound."""
        if not self.enabled:
            return None
        if not secret:
            return self.anonymous
        if secret not in self.tokens:
            raise ACLNotFound()
        return self.tokens[secret]

    def allowed(self, policy: Optional[Policy], resource: str, name: str, need: str) -> bool:
        """Whether ``policy`` grants ``need`` (read/write) on ``resource:name``."""
        if policy is None:
            return True
        default = "write" if self.default_policy == "allow" else "deny"
        return _LEVELS[policy.level(resource, name, default)] >= _LEVELS[need]

    def require(self, policy: Optional[Policy], resource: str, name: str, need: str) -> None:
        """Raise Consul's ``PermissionDeniedError`` text unless allowed."""
        if self.allowed(policy, resource, name, need):
            return
        assert policy is not None
        perm = f"'{resource}:{need}' on \"{name}\""
        if policy.accessor == ANONYMOUS_ACCESSOR:
            raise PermissionDenied(
                f"Permission denied: anonymous token lacks permission {perm}. The anonymous "
                "token is used implicitly when a request does not specify a token."
            )
        raise PermissionDenied(
            f"Permission denied: token with AccessorID '{policy.accessor}' lacks permission {perm}"
        )
