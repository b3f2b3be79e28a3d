"""signaling/protocol.py names the protocol: SPEC §5's close codes, the table in its docstring
and the `Close` enum agree, and nothing else in signaling/ writes a close code, an error code
or a message type by hand (so every code the server sends is one of the module's)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from signaling import protocol
from signaling.protocol import NO_RECONNECT, Close, Error, Message, Problem

SIGNALING = Path(protocol.__file__).resolve().parent
SOURCES = sorted(p for p in SIGNALING.glob("*.py") if p.name != "protocol.py")

# SPEC §5, "WebSocket close codes", as written there.
SPEC_CLOSE_CODES = {
    1000: "normal",
    4400: "protocol error",
    4401: "bad or expired token",
    4403: "refused by policy",
    4409: "replaced by a newer session of the same identity",
    4410: "visit over",
    4413: "message too large",
    4429: "rate limited",
    4502: "media could not be established",
    4503: "node unavailable or overloaded",
}
SPEC_NO_RECONNECT = {4401, 4403, 4410}

# Calls that take a close code, and calls whose first argument is an error code.
CLOSE_CALLS = {"close", "end_session", "halt", "Refusal", "Problem"}
ERROR_CALLS = {
    "Refusal",
    "Problem",
    "TokenError",
    "Malformed",
    "Forbidden",
    "NotFound",
    "Conflict",
    "RuleBroken",
}
# The OpenAPI document's own "type"s (JSON Schema's, and its security scheme's)
OPENAPI_TYPES = {"string", "object", "boolean", "array", "integer", "number", "http"}


def table() -> dict[int, tuple[str, str]]:
    """The docstring's close-code table: code -> (name, from)."""
    rows = re.findall(
        r"^\| (\d{4}) \| (\w+)\s*\|[^|]*\| ([^|]+?)\s*\|$", protocol.__doc__ or "", re.M
    )
    return {int(code): (name, source) for code, name, source in rows}


def test_the_docstring_table_is_the_close_enum() -> None:
    assert {code: name for code, (name, _) in table().items()} == {c.value: c.name for c in Close}


def test_spec_close_codes_are_all_there_and_marked_as_spec() -> None:
    spec = {code for code, (_, source) in table().items() if source == "SPEC §5"}
    assert spec == set(SPEC_CLOSE_CODES)
    others = {code: source for code, (_, source) in table().items() if code not in SPEC_CLOSE_CODES}
    assert others == {1001: "RFC 6455", 1011: "RFC 6455", 4307: "Parlor"}


def test_clients_are_told_not_to_reconnect_after_what_spec_says() -> None:
    assert SPEC_NO_RECONNECT <= set(NO_RECONNECT) <= {c.value for c in Close}


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in SOURCES]


def _name(call: ast.Call) -> str:
    func = call.func
    return (
        func.attr
        if isinstance(func, ast.Attribute)
        else func.id
        if isinstance(func, ast.Name)
        else ""
    )


def test_no_close_code_is_written_by_hand() -> None:
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and type(node.value) is int
                and 4300 <= node.value < 4600
            ):
                found.append(f"{path.name}:{node.lineno}: {node.value}")
            if isinstance(node, ast.Call) and _name(node) in CLOSE_CALLS:
                values = [
                    *node.args,
                    *(k.value for k in node.keywords if k.arg in ("code", "close")),
                ]
                found += [f"{path.name}:{v.lineno}: {v.value}" for v in values
                          if isinstance(v, ast.Constant) and type(v.value) is int]  # fmt: skip
    assert found == []


def test_no_error_code_or_message_type_is_written_by_hand() -> None:
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in ("type", "code"):
                        literal = isinstance(value, ast.Constant) and isinstance(value.value, str)
                        if literal and value.value not in OPENAPI_TYPES:  # type: ignore[union-attr]
                            found.append(f"{path.name}:{value.lineno}: {key.value}={value.value!r}")  # type: ignore[union-attr]
            if isinstance(node, ast.Call) and (
                _name(node) in ERROR_CALLS or _name(node) == "error_response"
            ):
                at = 1 if _name(node) == "error_response" else 0
                first = node.args[at] if len(node.args) > at else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append(f"{path.name}:{first.lineno}: {_name(node)}({first.value!r}, ...)")
    assert found == []


def _used_names() -> str:
    return "\n".join(path.read_text() for path in SOURCES)


def test_every_problem_and_error_code_is_used() -> None:
    """A name nobody sends is not part of the protocol: no dead entries."""
    used = _used_names()
    problems = [name for name, value in vars(protocol).items() if isinstance(value, Problem)]
    assert problems
    assert [p for p in problems if not re.search(rf"\b{p}\b", used)] == []
    coded = {value.code for value in vars(protocol).values() if isinstance(value, Problem)}
    unused = [e for e in Error if e not in coded and not re.search(rf"\bError\.{e.name}\b", used)]
    assert unused == []
    assert [m for m in Message if not re.search(rf"\bMessage\.{m.name}\b", used)] == []


@pytest.mark.parametrize(
    "problem", [v for v in vars(protocol).values() if isinstance(v, Problem)], ids=str
)
def test_every_problem_closes_with_a_protocol_code_or_not_at_all(problem: Problem) -> None:
    assert problem.close is None or problem.close in Close
    assert problem.code in Error
