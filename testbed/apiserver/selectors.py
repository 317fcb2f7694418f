"""Label and field selectors: parse the query strings and match objects, with the server's error messages.

Label selectors follow `k8s.io/apimachinery/pkg/labels` (`a=b`, `a==b`, `a!=b`, `a in (x,y)`,
`a notin (x)`, `a`, `!a`, `a>1`, `a<1`); field selectors `k8s.io/apimachinery/pkg/fields` (`k=v`,
`k==v`, `k!=v`, with `\\,` `\\=` `\\\\` escapes). Which fields a resource can be selected on is the
resource table's business (`ResourceType.field_value`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from testbed.apiserver.errors import BadRequest

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET_OP = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_BINARY_OP = re.compile(r"^([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "exists", "!exists", "=", "!=", "in", "notin", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case _:
                return present and _compare(str(value), self.op, next(iter(self.values)))


def _compare(value: str, op: str, bound: str) -> bool:
    try:
        left, right = int(value), int(bound)
    except ValueError:
        return False
    return left > right if op == ">" else left < right


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _check_key(key: str) -> None:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise BadRequest(
            f'unable to parse requirement: key: Invalid value: "{key}": name part must consist of '
            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )


def _check_value(key: str, value: str) -> None:
    if not _VALUE.match(value) or len(value) > 63:
        raise BadRequest(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{value}": a valid label '
            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character"
        )


def _requirement(text: str) -> Requirement:
    if text.startswith("!"):
        key = text[1:].strip()
        _check_key(key)
        return Requirement(key, "!exists")
    if match := _SET_OP.match(text):
        key, op, raw = match.group(1), match.group(2), match.group(3)
        values = frozenset(v.strip() for v in raw.split(","))
        _check_key(key)
        for value in values:
            _check_value(key, value)
        return Requirement(key, op, values)
    if match := _BINARY_OP.match(text):
        key, op, value = match.group(1), match.group(2), match.group(3).strip()
        _check_key(key)
        if op in (">", "<"):
            if not re.fullmatch(r"-?\d+", value):
                raise BadRequest(
                    "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                )
            return Requirement(key, op, frozenset([value]))
        _check_value(key, value)
        return Requirement(key, "=" if op in ("=", "==") else "!=", frozenset([value]))
    _check_key(text)
    return Requirement(text, "exists")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse `?labelSelector=`; BadRequest (400) when malformed."""
        text = text.strip()
        if not text:
            return cls()
        return cls(tuple(_requirement(part) for part in _split_top_level(text)))

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()
    """(field, equal, value): `equal` is False for `!=`."""

    @classmethod
    def parse(cls, text: str, check: Callable[[str], str | None]) -> FieldSelector:
        """Parse `?fieldSelector=`; `check(field)` returns the server's error for an unsupported field."""
        text = text.strip()
        if not text:
            return cls()
        terms = []
        for part in _split_unescaped(text, ","):
            match = re.match(r"^(.*?)(==|!=|=)(.*)$", part)
            if not match:
                raise BadRequest(f"invalid selector: '{text}'; can't understand '{part}'")
            field, op, value = match.group(1).strip(), match.group(2), _unescape(match.group(3).strip())
            if error := check(field):
                raise BadRequest(error)
            terms.append((field, op != "!=", value))
        return cls(tuple(terms))

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, value_of: Callable[[str], str]) -> bool:
        return all((value_of(field) == value) == equal for field, equal, value in self.terms)
