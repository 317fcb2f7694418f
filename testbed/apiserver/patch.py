"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), applied to plain dicts as the server applies them.

Strategic merge patch, which needs per-field knowledge, is in `strategic.py`. Errors are `PatchError`;
the store turns them into the server's answers (400 for a malformed patch, 422 for one that does not
apply, as golden case 19).
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(Exception):
    """The patch does not apply to the object (422 on the real server)."""


class MalformedPatch(Exception):
    """The patch document itself is not valid (400 on the real server)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must be empty or start with a '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"doc is missing path: missing key {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"cannot traverse into a {type(node).__name__}")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"doc is missing key {last!r}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError("cannot index a scalar")


def _test_value(doc: Any, tokens: list[str]) -> Any:
    """What a `test` op compares: as evanphx/json-patch, a missing key of an object reads as null."""
    if tokens:
        parent = _parent(doc, tokens)
        if isinstance(parent, dict) and tokens[-1] not in parent:
            return None
    return _get(doc, tokens)


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"remove operation does not apply: doc is missing key {last!r}")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, for_add=False)]
    else:
        raise PatchError("cannot remove from a scalar")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of `doc`: add, remove, replace, move, copy, test (a failed test is a PatchError)."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise MalformedPatch("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path")
        if not isinstance(path, str):
            raise PatchError(f"operation {op!r} is missing its path")
        tokens = _pointer(path)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"operation {op!r} is missing its value")
        value = copy.deepcopy(operation.get("value"))
        match op:
            case "add":
                doc = _add(doc, tokens, value)
            case "remove":
                doc = _remove(doc, tokens)
            case "replace":
                _get(doc, tokens)
                doc = _add(_remove(doc, tokens), tokens, value) if tokens else value
            case "test":
                if _test_value(doc, tokens) != value:
                    raise PatchError(f"testing value {path} failed: test failed")
            case "move" | "copy":
                source = _pointer(str(operation.get("from", "")))
                moved = copy.deepcopy(_get(doc, source))
                if op == "move":
                    doc = _remove(doc, source)
                doc = _add(doc, tokens, moved)
            case _:
                raise PatchError(f"unexpected kind of operation: {op!r}")
    return doc
