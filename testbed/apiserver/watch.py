"""Watch machinery: stored versions, the change history, and one subscription per watcher.

* `Entry` is one committed version of an object. It renders its JSON once, lazily, and caches the
  watch line per event type, so fanning a change out to N watchers serializes it once and shares the
  bytes (what the HTTP layer writes) — in-process watchers get a fresh dict parsed from those bytes.
* `History` keeps the last K changes (etcd's retained revisions plus the watch cache window, in one):
  a watch from a resourceVersion older than what it holds gets 410 `too old resource version: N (M)`.
* `Watch` is one subscription: it filters by namespace and selectors (an object leaving the selection
  is sent as DELETED, entering as ADDED, as the watch cache does), queues matching events, and emits a
  BOOKMARK with the current resourceVersion when nothing happened for `bookmark_interval` seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from testbed.apiserver.errors import too_old_resource_version
from testbed.apiserver.selectors import FieldSelector, LabelSelector

if TYPE_CHECKING:
    from testbed.apiserver.resources import ResourceType

ADDED, MODIFIED, DELETED, BOOKMARK = "ADDED", "MODIFIED", "DELETED", "BOOKMARK"
MAX_PENDING = 100_000
"""A watcher this far behind is closed, as kube-apiserver closes the watch of an unresponsive consumer."""


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Entry:
    """One committed version of an object. `obj` is shared and must never be mutated."""

    __slots__ = ("_full", "_item", "_lines", "obj", "rv")

    def __init__(self, obj: dict[str, Any], rv: int):
        self.obj = obj
        self.rv = rv
        self._full: bytes | None = None
        self._item: bytes | None = None
        self._lines: dict[str, bytes] = {}

    def item_json(self) -> bytes:
        """The object as a list item: without kind and apiVersion (golden case 25)."""
        if self._item is None:
            self._item = dumps({k: v for k, v in self.obj.items() if k not in ("kind", "apiVersion")})
        return self._item

    def full_json(self) -> bytes:
        if self._full is None:
            self._full = dumps(self.obj)
        return self._full

    def line(self, event_type: str) -> bytes:
        """`{"type":...,"object":...}` plus a newline: one watch event, rendered once per type."""
        line = self._lines.get(event_type)
        if line is None:
            line = b'{"type":"' + event_type.encode() + b'","object":' + self.full_json() + b"}\n"
            self._lines[event_type] = line
        return line

    def copy(self) -> dict[str, Any]:
        """A private deep copy of the object for a caller to keep or modify."""
        result: dict[str, Any] = json.loads(self.full_json())
        return result


@dataclass(slots=True)
class Change:
    """One write: what etcd would put in its log (the new state and, like `prev_kv`, the old one)."""

    rv: int
    type: str
    resource: str
    key: str
    namespace: str
    obj: Entry
    """The object the event carries (for DELETED: the last state, stamped with the deletion's RV)."""
    prev: Entry | None


class History:
    """The last `size` changes; `compacted` is the newest resourceVersion no longer replayable."""

    def __init__(self, size: int):
        self._changes: deque[Change] = deque()
        self.size = max(1, size)
        self.compacted = 0

    def append(self, change: Change) -> None:
        self._changes.append(change)
        while len(self._changes) > self.size:
            self.compacted = self._changes.popleft().rv

    def compact(self, rv: int) -> None:
        """Forget everything up to `rv` (etcd compaction)."""
        while self._changes and self._changes[0].rv <= rv:
            self._changes.popleft()
        self.compacted = max(self.compacted, rv)

    def check(self, rv: int) -> None:
        """Raise 410 Expired if the changes after `rv` are no longer all kept."""
        if rv < self.compacted:
            raise too_old_resource_version(rv, self.compacted)

    def since(self, rv: int) -> list[Change]:
        """The kept changes newer than `rv`, oldest first (call `check` first)."""
        newer: list[Change] = []
        for change in reversed(self._changes):
            if change.rv <= rv:
                break
            newer.append(change)
        newer.reverse()
        return newer

    def __iter__(self) -> Iterator[Change]:
        return iter(self._changes)

    def __len__(self) -> int:
        return len(self._changes)


class WatchEvent(NamedTuple):
    """What an in-process watcher receives: the event type and a private copy of the object."""

    type: str
    object: dict[str, Any]


@dataclass(frozen=True)
class WatchFilter:
    """What a watch selects: one resource, optionally one namespace, label and field selectors."""

    rtype: ResourceType
    namespace: str = ""
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, entry: Entry) -> bool:
        obj = entry.obj
        if self.labels and not self.labels.matches(obj):
            return False
        return not self.fields or self.fields.matches(partial(self.rtype.field_value, obj))


class Watch:
    """One watch subscription; an async iterator of `WatchEvent`, or raw lines via `next_lines`.

    Created by `Store.watch`. Iteration ends when the watch is closed (by `close()`, by the store's
    `close_watches()`, or because the consumer fell `MAX_PENDING` events behind).
    """

    def __init__(
        self,
        selection: WatchFilter,
        *,
        bookmarks: bool,
        bookmark_interval: float,
        current_rv: Callable[[], int],
        on_close: Callable[[Watch], None],
    ):
        self.selection = selection
        self.rtype = selection.rtype
        self._filtered = bool(selection.labels or selection.fields)
        self._bookmarks = bookmarks
        self._interval = bookmark_interval
        self._current_rv = current_rv
        self._on_close = on_close
        self._pending: deque[tuple[str, Entry] | bytes] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._last_sent = asyncio.get_running_loop().time()

    def offer(self, change: Change) -> None:
        """Queue `change` if this watcher sees it (called by the store on every commit)."""
        namespace = self.selection.namespace
        if self._closed or (namespace and change.namespace != namespace):
            return
        if not self._filtered:
            self.push(change.type, change.obj)
            return
        now_matches = change.type != DELETED and self.selection.matches(change.obj)
        was_matching = change.prev is not None and self.selection.matches(change.prev)
        if change.type == DELETED:
            if was_matching:
                self.push(DELETED, change.obj)
        elif now_matches:
            self.push(MODIFIED if was_matching else ADDED, change.obj)
        elif was_matching:
            self.push(DELETED, change.obj)

    def push(self, event_type: str, entry: Entry) -> None:
        self._pending.append((event_type, entry))
        if len(self._pending) > MAX_PENDING:
            self.close()
        self._wakeup.set()

    def push_bookmark(self, rv: int, annotations: dict[str, str] | None = None) -> None:
        self._pending.append(self._bookmark_line(rv, annotations))
        self._wakeup.set()

    def _bookmark_line(self, rv: int, annotations: dict[str, str] | None = None) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        obj = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta}
        return dumps({"type": BOOKMARK, "object": obj}) + b"\n"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._wakeup.set()
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    async def _wait(self, deadline: float | None) -> bool:
        """Wait for something to send; True if there is, False at the deadline or when closed."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            if self._closed:
                return False
            now = loop.time()
            if self._bookmarks and now >= self._last_sent + self._interval:
                self._pending.append(self._bookmark_line(self._current_rv()))
                break
            wake_at = self._last_sent + self._interval if self._bookmarks else None
            if deadline is not None:
                if now >= deadline:
                    return False
                wake_at = deadline if wake_at is None else min(wake_at, deadline)
            self._wakeup.clear()
            try:
                async with asyncio.timeout_at(wake_at):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        self._last_sent = loop.time()
        return True

    async def next_lines(self, deadline: float | None = None) -> bytes | None:
        """All queued events as JSON lines in one chunk; None when the watch ended or `deadline` passed."""
        if not await self._wait(deadline):
            return None
        chunks = []
        while self._pending:
            item = self._pending.popleft()
            chunks.append(item if isinstance(item, bytes) else item[1].line(item[0]))
        return b"".join(chunks)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        if not await self._wait(None):
            raise StopAsyncIteration
        item = self._pending.popleft()
        if isinstance(item, bytes):
            event = json.loads(item)
            return WatchEvent(event["type"], event["object"])
        return WatchEvent(item[0], item[1].copy())

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
