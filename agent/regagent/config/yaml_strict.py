"""YAML as a configuration format, minus the parts that hurt: aliases and duplicate keys.

PyYAML's SafeLoader expands aliases while constructing, so a few hundred bytes of nested
aliases (a "billion laughs") grow to gigabytes; and it lets a later duplicate key silently
replace an earlier one (a second `consul:` block dropping the first one's servers and token).
Here the document is first composed into a node tree, with anchors and aliases refused as they
are read, then checked for duplicate keys, and only then constructed. Works with PyYAML 6.0.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from regagent.errors import ConfigError

KeyPath = Tuple[Any, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


def format_path(path: KeyPath) -> str:
    """`("services", 0, "port")` -> `services[0].port`, as the user would point at it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class NoAliasError(yaml.MarkedYAMLError):
    """An anchor or alias, refused before anything is expanded."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors (`&name`) and aliases (`*name`) while composing."""

    def compose_node(self, parent: Optional[Node], index: Any) -> Optional[Node]:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise NoAliasError(
                problem=f"alias *{event.anchor} is not supported in regagent configuration; "
                "write the value out in full",
                problem_mark=event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise NoAliasError(
                problem=f"anchor &{anchor} is not supported in regagent configuration "
                "(aliases are refused); remove it",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def duplicate_keys(root: Node, name: str) -> List[str]:
    """Every key set twice in one mapping, with both line numbers, in file order."""
    found: List[Tuple[int, str]] = []
    stack: List[Tuple[Node, KeyPath]] = [(root, ())]
    while stack:  # iterative: nesting depth is bounded by the composer, not by us
        node, path = stack.pop()
        if isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first: Dict[Tuple[str, str], Tuple[int, int]] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    stack.append((value_node, (*path, "?")))
                    continue
                here = (*path, key_node.value)
                mark = key_node.start_mark
                line, column = mark.line + 1, mark.column + 1
                key = (key_node.tag, key_node.value)
                if key in first:
                    was_line, was_column = first[key]
                    found.append(
                        (
                            line,
                            f"{name}: line {line}, column {column}: {format_path(here)}: "
                            f"duplicate key, first set at line {was_line}, column {was_column}; "
                            "a mapping may set each key once (merge the two, or remove one)",
                        )
                    )
                else:
                    first[key] = (line, column)
                stack.append((value_node, here))
    return [message for _, message in sorted(found)]


def parse_yaml(text: str, name: str) -> Any:
    """The document in `text` (file `name`), or ConfigError with file, line and column."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = duplicate_keys(node, name)
        if problems:
            raise ConfigError(problems)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{name}: {where}: malformed YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: malformed YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: malformed YAML: nested too deeply"]) from None
    finally:
        loader.dispose()
