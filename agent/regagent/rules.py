"""Consul's data rules, checked before Consul does: config validation and the planner share them.

Sources: `structs.ValidateServiceMetadata` (Meta limits), the service-name rule Consul's DNS
interface needs, and the `<name>-<port>` service-ID convention regagent uses everywhere.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, List, Optional, Tuple

SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
SERVICE_NAME_MAX = 128


def service_id(name: str, port: int, explicit: Optional[str] = None) -> str:
    """The service ID regagent registers: the configured `id`, else `<name>-<port>`."""
    return explicit or f"{name}-{port}"


def service_name_problem(name: str) -> Optional[str]:
    """Why `name` is not a service name Consul and its DNS interface accept, or None."""
    if SERVICE_NAME_RE.match(name) and len(name) <= SERVICE_NAME_MAX:
        return None
    return (
        f"{name!r} is not a valid service name (letters, digits, '-' and '_', "
        f"starting with a letter or digit, at most {SERVICE_NAME_MAX} characters)"
    )


def meta_problems(meta: Dict[str, str]) -> List[str]:
    """Consul's own Meta rules (structs.ValidateServiceMetadata), checked before Consul does."""
    return [message for _, message in meta_problems_by_key(meta)]


def meta_problems_by_key(meta: Dict[str, str]) -> List[Tuple[Optional[str], str]]:
    """Each problem with the key it is about, so it can be traced to the file that set that key."""
    problems: List[Tuple[Optional[str], str]] = []
    if len(meta) > META_MAX_PAIRS:
        # Name the key that went over the limit: after a merge, its file is the one to trim.
        over = list(meta)[META_MAX_PAIRS]
        problems.append((over, f"has {len(meta)} pairs; Consul allows at most {META_MAX_PAIRS}"))
    for key, value in meta.items():
        if not META_KEY_RE.match(key):
            problems.append((key, f"key {key!r} may contain only letters, digits, '_' and '-'"))
        elif len(key) > META_KEY_MAX:
            problems.append((key, f"key {key[:20]!r}... is longer than {META_KEY_MAX} characters"))
        elif key.startswith("consul-"):
            problems.append((key, f"key {key!r} uses the prefix 'consul-', which Consul reserves"))
        if len(value) > META_VALUE_MAX:
            problems.append((key, f"value of {key!r} is longer than {META_VALUE_MAX} characters"))
    return problems


def hostport_problem(text: str) -> Optional[str]:
    """Why `text` is not a usable host:port ([v6]:port for IPv6), or None if it is."""
    if "://" in text:
        # A common slip: a URL where host:port belongs. The scheme has its own key.
        return f"{text!r} is a URL; write host:port and set consul.scheme instead"
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        return f"{text!r} is not host:port"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{text!r} has no valid port (1-65535)"
    if host.startswith("["):
        if not host.endswith("]"):
            return f"{text!r}: unbalanced brackets around the IPv6 address"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{text!r}: {host[1:-1]!r} in brackets is not an IPv6 address"
    elif ":" in host:
        return f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:8500"
    elif any(c.isspace() for c in host):
        return f"{text!r}: the host name contains white space"
    return None


def token_text(token: str) -> str:
    """The token as sent: without the one trailing newline a file (or YAML `|`) ends with."""
    return token[:-1] if token.endswith("\n") else token


def token_problem(token: str) -> Optional[str]:
    """Why `token` cannot be sent as a header value, without quoting it; None if it can.

    One trailing newline (as editors write files) is allowed; everything else must be
    printable ASCII without blanks (0x21-0x7e), as Consul's tokens (UUIDs) are.
    """
    text = token_text(token)
    if not text:
        return "is empty"
    if "\n" in text:
        return (
            f"holds {text.count(chr(10)) + 1} lines; it must be exactly one line "
            "(no comments, no blank lines)"
        )
    for column, char in enumerate(text, start=1):
        if "!" <= char <= "~":
            continue
        if char in " \t":
            what = "a space or tab"
        elif char == "\r":
            what = "a carriage return (Windows line end?)"
        elif ord(char) < 0x80:
            what = "a control character"
        else:
            what = "a non-ASCII character"
        return f"contains {what} at column {column}; it must be one line of printable ASCII"
    return None
