"""Consul's data rules, checked before Consul does: config validation and the planner share them.

Sources: `structs.ValidateServiceMetadata` (Meta limits), the service-name rule Consul's DNS
interface needs, and the `<name>-<port>` service-ID convention regagent uses everywhere. Also
the rules for what regagent puts into URLs and headers (metrics paths, addresses, the token),
and `printable_text`, which makes text taken from exporters safe for Meta, Output and terminals,
and how durations are written: `format_duration` for the configuration, `go_duration` for
Consul's agent API. All pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import time
import unicodedata
from typing import Dict, List, Optional, Tuple

SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
SERVICE_NAME_MAX = 128
URL_PATH_MAX = META_VALUE_MAX  # the metrics path is also Meta `metrics_path`
HOST_NAME_MAX = 253
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# ANSI/VT100 escape sequences (CSI ... final byte, OSC ... BEL/ST, two-byte ESC x): removed whole,
# so no "[31m" debris is left behind when the escape character itself goes.
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


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
        # Consul counts bytes (Go's len), so a value of 300 multi-byte characters is too long.
        if len(value.encode("utf-8")) > META_VALUE_MAX:
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


def split_hostport(address: str) -> Tuple[str, int]:
    """`host:port` or `[v6]:port` to (host as written, brackets kept, port)."""
    host, _, port = address.rpartition(":")
    return host, int(port)


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: float) -> str:
    """Seconds back into the largest whole unit the configuration accepts: 300.0 -> `5m`."""
    return _duration(seconds, _UNITS)


def go_duration(seconds: float) -> str:
    """Seconds as Go's `time.ParseDuration` reads them, for a check Consul's agent runs
    (`Interval`, `Timeout`): the configuration's form without days, a unit Go does not know
    (86400.0 -> `24h`; Consul refuses `1d` with a 400)."""
    return _duration(seconds, _UNITS[1:])


def _duration(seconds: float, units: Tuple[Tuple[str, int], ...]) -> str:
    for unit, size in units:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{round(seconds * 1000)}ms"


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


def url_path_problem(path: str) -> Optional[str]:
    """Why `path` is not an absolute URL path regagent may append to `scheme://host:port`.

    `@host:port/x` would turn the check URL's host into user info and send checks (and
    Prometheus, through Meta metrics_path) to another host; `//host/x` reads as a host to
    some URL parsers. So: starts with one `/`, printable ASCII, no `@`, `#`, blanks or `\\`.
    """
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path; it must start with '/', e.g. /metrics"
    if path.startswith("//"):
        return f"{path!r} starts with '//', which URL parsers read as a host name"
    if len(path) > URL_PATH_MAX:
        return f"is longer than {URL_PATH_MAX} characters"
    for char in path:
        if not "!" <= char <= "~":
            return f"{path!r} contains a blank, control or non-ASCII character; percent-encode it"
        if char in "@#\\":
            return f"{path!r} contains {char!r}, which does not belong in a metrics path"
    return None


def host_problem(host: str) -> Optional[str]:
    """Why `host` is not an address a service may be registered (and checked) at, or None.

    An IP address other than a wildcard, or a DNS host name (RFC 1123 labels).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.is_unspecified:
            return (
                f"{host!r} is a wildcard address; Prometheus cannot scrape it, "
                "give this host's own address"
            )
        return None
    labels = host.rstrip(".").split(".")
    if (
        len(host) <= HOST_NAME_MAX
        and all(_HOST_LABEL_RE.match(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return None
    return f"{host!r} is neither an IP address nor a host name"


def node_name_problem(name: str) -> Optional[str]:
    """Why `name` is not a node name regagent registers, or None.

    Consul's own rule for node names is the DNS one (agent/config/builder.go warns about any
    character outside letters, digits and '-', using agent/dns's RFC 1123 label rule, and about
    more than 63 characters). A host name may also have dots (an FQDN: Consul accepts it, only
    its DNS interface cannot serve it), so: RFC 1123 labels of letters, digits and '-', each
    starting and ending with a letter or digit, at most 63 characters, joined by dots, at most
    253 in all. Nothing else reaches Consul's URLs, the catalog and Prometheus's labels.
    """
    labels = name.split(".")
    if name and len(name) <= HOST_NAME_MAX and all(_HOST_LABEL_RE.match(label) for label in labels):
        return None
    shown = printable_text(name, 80)
    return (
        f"{shown!r} is not a valid node name (letters, digits and '-', starting and ending with "
        "a letter or digit, at most 63 characters; dot-separated parts of a host name allowed)"
    )


def text_problem(text: str) -> Optional[str]:
    """Why configured text must not be sent to Consul as it is, or None: the rule exporter
    text gets (`printable_text`), refused instead of repaired, since an operator can fix it.
    Control characters (NUL, escape sequences), bidi controls and zero-width characters would
    reach Consul, Prometheus labels and every terminal that shows them."""
    for position, char in enumerate(text, start=1):
        if not _printable(char):
            return (
                f"contains {_describe_char(char)} at character {position}; "
                "only printable characters are allowed"
            )
    return None


def _describe_char(char: str) -> str:
    name = unicodedata.name(char, "")
    code = f"U+{ord(char):04X}"
    return f"{code} ({name.lower()})" if name else f"{code} (a control character)"


def _printable(char: str) -> bool:
    return char == " " or (char.isprintable() and unicodedata.category(char)[0] != "C")


def printable_text(text: str, limit: int = META_VALUE_MAX) -> str:
    """`text` from an untrusted source reduced to printable characters, at most `limit` bytes.

    Escape sequences are removed, any other control or format character (and a lone
    surrogate) becomes `?`, and the result is cut to `limit` UTF-8 bytes (Consul's Meta value
    limit by default) without splitting a character, ending in `...` when cut. The same input
    always gives the same output, so check Output and Meta stay stable across cycles.
    """
    cleaned = "".join(char if _printable(char) else "?" for char in _ANSI_RE.sub("", text))
    if len(cleaned.encode("utf-8")) <= limit:
        return cleaned
    room = max(limit - 3, 0)
    cut = cleaned.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut + "..."[: limit - room]


def exporter_text(text: Optional[str]) -> Optional[str]:
    """Text an exporter chose (its version label), safe for Meta, check Output and a terminal:
    printable, within Consul's Meta value limit; None when nothing printable is left."""
    if text is None:
        return None
    return printable_text(text) or None


def utc_text(moment: float) -> str:
    """A unix time as ISO 8601 UTC in whole seconds (cut, not rounded): `2026-11-26T10:00:00Z`,
    the one form regagent prints in check output, logs, state files and `maint status`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(moment)))
