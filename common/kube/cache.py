"""The informer's local cache: objects by `namespace/name`, plus secondary indexes.

Like client-go's `cache.Indexer`: an index function maps an object to zero or more index values
(e.g. a PV to the `namespace/name` of its claim), and `by_index` answers "which objects have this
value" without a scan. Objects are the API server's JSON as plain dicts, shared, never copied: callers
must not mutate what they get (copy before changing, as with client-go's `DeepCopy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from common.kube.resources import object_key

Object = dict[str, Any]
IndexFunc = Callable[[Object], Iterable[str]]


class Store:
    """Objects keyed by `namespace/name`, with named secondary indexes kept in step."""

    def __init__(self) -> None:
        self._items: dict[str, Object] = {}
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {}

    def add_index(self, name: str, func: IndexFunc) -> None:
        """Register an index; existing objects are indexed at once."""
        if name in self._index_funcs:
            raise ValueError(f"index {name!r} already exists")
        self._index_funcs[name] = func
        self._indexes[name] = {}
        for key, obj in self._items.items():
            self._index_one(name, key, obj)

    def _index_one(self, name: str, key: str, obj: Object) -> None:
        index = self._indexes[name]
        for value in self._index_funcs[name](obj):
            index.setdefault(value, set()).add(key)

    def _unindex_one(self, name: str, key: str, obj: Object) -> None:
        index = self._indexes[name]
        for value in self._index_funcs[name](obj):
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]

    def put(self, obj: Object) -> Object | None:
        """Insert or replace; returns the previous object with that key, if any."""
        key = object_key(obj)
        old = self._items.get(key)
        for name in self._index_funcs:
            if old is not None:
                self._unindex_one(name, key, old)
            self._index_one(name, key, obj)
        self._items[key] = obj
        return old

    def index_values(self, obj: Object) -> dict[str, list[str]]:
        """Every index's values for `obj`, without storing it (raises what an index function raises)."""
        return {name: list(func(obj)) for name, func in self._index_funcs.items()}

    def remove(self, key: str) -> Object | None:
        old = self._items.pop(key, None)
        if old is not None:
            for name in self._index_funcs:
                self._unindex_one(name, key, old)
        return old

    def get(self, key: str) -> Object | None:
        return self._items.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Object | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def by_index(self, name: str, value: str) -> list[Object]:
        keys = self._indexes[name].get(value, ())
        return [self._items[key] for key in keys]

    def list_keys(self) -> list[str]:
        return list(self._items)

    def list(self) -> list[Object]:
        return list(self._items.values())

    def __iter__(self) -> Iterator[Object]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
