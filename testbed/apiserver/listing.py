"""Paginated lists: continue tokens and the consistent snapshot a continued list is served from.

A continue token is what the etcd3 storage layer emits: unpadded URL-safe base64 of
`{"v":"meta.k8s.io/v1","rv":<list RV>,"start":"<last key>\\u0000"}` (golden case 25), the key relative
to the list's prefix (`name` in a namespace, `namespace/name` across namespaces). Every page of a list
is served from the state at the first page's resourceVersion, rebuilt by undoing the kept changes made
since; once those changes are compacted the token has expired (410), as in etcd.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from testbed.apiserver import errors
from testbed.apiserver.selectors import FieldSelector, LabelSelector
from testbed.apiserver.watch import Entry, History

if TYPE_CHECKING:
    from testbed.apiserver.resources import ResourceType

EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)


def encode_continue(rv: int, start: str) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """(list RV, first key to serve) of a token; 400 if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        rv, start = int(decoded["rv"]), str(decoded["start"])
        if decoded.get("v") != "meta.k8s.io/v1":
            raise ValueError("unsupported version")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise errors.BadRequest(f"invalid continue token: continue key is not valid: {exc}") from None
    if "/.." in "/" + start or start.startswith("/"):
        raise errors.BadRequest(
            "invalid continue token: continue key is not valid: key must not be a relative path"
        )
    return rv, start


def snapshot(
    current: dict[str, Entry], history: History, resource: str, rv: int, *, token_start: str = ""
) -> dict[str, Entry]:
    """The objects of `resource` as they were at `rv`; 410 Expired when that state is no longer known."""
    if rv < history.compacted:
        metadata = {"continue": encode_continue(-1, token_start)} if token_start else {}
        if token_start:
            raise errors.Expired(EXPIRED_CONTINUE, metadata=metadata)
        raise errors.Expired("The resourceVersion for the provided list is too old.")
    state = dict(current)
    for change in reversed(history.since(rv)):
        if change.resource != resource:
            continue
        if change.prev is None:
            state.pop(change.key, None)
        else:
            state[change.key] = change.prev
    return state


def parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise errors.BadRequest(f'invalid resource version "{text}"') from None


@dataclass(frozen=True, kw_only=True)
class ListOptions:
    """The query parameters of a list request."""

    label_selector: str = ""
    field_selector: str = ""
    limit: int = 0
    """Page size; 0 for everything."""
    continue_token: str = ""
    resource_version: str = ""
    """With `resource_version_match="Exact"`, list the state at that version; otherwise the newest."""
    resource_version_match: str = ""


def select(
    objects: dict[str, Entry],
    history: History,
    rtype: ResourceType,
    options: ListOptions,
    *,
    namespace: str,
    rv: int,
) -> tuple[list[Entry], dict[str, Any]]:
    """One page of a list: the matching stored versions in key order, and the list metadata."""
    labels = LabelSelector.parse(options.label_selector)
    fields = FieldSelector.parse(options.field_selector, rtype.field_error)
    prefix = f"{namespace}/" if rtype.namespaced and namespace else ""
    start = ""
    if options.continue_token:
        rv, relative = decode_continue(options.continue_token)
        objects = snapshot(objects, history, rtype.key, rv, token_start=relative)
        start = prefix + relative
    elif options.resource_version_match == "Exact" and options.resource_version:
        rv = parse_rv(options.resource_version)
        objects = snapshot(objects, history, rtype.key, rv)
    keys = sorted(k for k in objects if k.startswith(prefix) and k >= start)
    found: list[Entry] = []
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    for index, key in enumerate(keys):
        entry = objects[key]
        if labels and not labels.matches(entry.obj):
            continue
        if fields and not fields.matches(partial(rtype.field_value, entry.obj)):
            continue
        found.append(entry)
        if options.limit and len(found) == options.limit and index + 1 < len(keys):
            meta["continue"] = encode_continue(rv, key[len(prefix) :] + "\x00")
            if not labels and not fields:
                meta["remainingItemCount"] = len(keys) - index - 1
            break
    return found, meta
