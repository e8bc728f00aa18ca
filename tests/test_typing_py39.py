"""Annotations stay evaluable on Python 3.9 (RHEL 9's python3), in every module of the agent.

`from __future__ import annotations` keeps `X | Y` and `tuple[...]` as strings, so the code
imports fine on 3.9, but `typing.get_type_hints` (and anything built on it) evaluates them and
fails there on `X | Y`; `config/model.py`'s dataclass fields are evaluated that way by the
validator. The test runs on any Python, so it reads the source instead.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List

import pytest

AGENT = Path(__file__).resolve().parent.parent / "agent" / "regagent"
MODULES = sorted(AGENT.rglob("*.py"))
BUILTIN_GENERICS = {"tuple", "list", "dict", "set", "frozenset", "type"}


def annotations(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            yield from (a.annotation for a in every if a is not None and a.annotation)
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def problems(annotation: ast.expr) -> List[str]:
    found = []
    for node in ast.walk(annotation):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            found.append(f"PEP 604 union {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in BUILTIN_GENERICS
        ):
            found.append(f"builtin generic {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(AGENT)))
def test_annotations_use_typing_generics(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        f"{path.name}:{annotation.lineno}: {problem}"
        for annotation in annotations(tree)
        for problem in problems(annotation)
    ]
    assert found == []


def test_the_guard_covers_the_modules_evaluated_at_run_time() -> None:
    covered = {str(p.relative_to(AGENT)) for p in MODULES}
    assert {"config/model.py", "model.py", "discovery/intents.py"} <= covered
