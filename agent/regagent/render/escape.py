"""Text output is safe to print: control characters are shown escaped, never sent raw.

What regagent prints comes partly from others: service names, tags, meta and check output that
any Consul client with write access can set, and text served by local processes. An ANSI escape
sequence in there must not repaint an operator's terminal or hide a line, so every text line
goes through `safe_line` on its way out (JSON output is escaped by the JSON encoder).
"""

from __future__ import annotations

import unicodedata
from typing import Iterable, List


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_line(text: str) -> str:
    """`text` with every control or format character (newlines included) escaped."""
    return "".join(
        char if unicodedata.category(char)[0] != "C" else _escaped(char) for char in text
    )


def safe_lines(lines: Iterable[str]) -> List[str]:
    return [safe_line(line) for line in lines]
