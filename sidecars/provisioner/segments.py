"""Topology segments for capacity tracking: which (key, value) sets the driver's nodes fall into.

external-provisioner's `pkg/capacity/topology`. A segment is a sorted tuple of (key, value) pairs;
the empty segment matches every node. Two sources:

* `NodeTopology` (the central controller): for each CSINode on which the driver is registered, the
  labels of its Node for the driver's topology keys (a CSINode without its Node, or a Node missing one
  of the labels, is skipped for now). Node label and CSINode key changes recompute the list in one
  worker of the work queue `csitopology` (changes coalesce), and callbacks hear what was added and
  removed.
* `FixedTopology` (`--node-deployment`): the one segment of this node's NodeGetInfo topology.

`selector(segment)` is the CSIStorageCapacity `nodeTopology` (matchLabels), and `segment_of` reads
one back (None for a selector that is not plain matchLabels).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from common.backoff import ItemExponential
from common.controller import run_workers
from common.kube.informer import FuncHandler, Informer
from common.logging import get_logger
from common.metrics import Metrics
from common.workqueue import WorkQueue
from sidecars.provisioner.topology import topology_keys

log = get_logger(__name__)

Obj = dict[str, Any]
Segment = tuple[tuple[str, str], ...]
Callback = Callable[[list[Segment], list[Segment]], None]


def make_segment(labels: Mapping[str, str]) -> Segment:
    return tuple(sorted(labels.items()))


def selector(segment: Segment) -> Obj:
    """upstream `Segment.GetLabelSelector`, as JSON: `{}` for the empty segment (omitempty)."""
    return {"matchLabels": dict(segment)} if segment else {}


def segment_of(node_topology: Mapping[str, Any] | None) -> Segment | None:
    """The segment a `nodeTopology` selector stands for, or None if it is not plain matchLabels."""
    node_topology = node_topology or {}
    if node_topology.get("matchExpressions") or set(node_topology) - {"matchLabels", "matchExpressions"}:
        return None
    return make_segment(node_topology.get("matchLabels") or {})


def term_segment(term: Mapping[str, Any]) -> Segment | None:
    """upstream `termToSegment`: a node selector term of `In [one value]` expressions, else None."""
    if term.get("matchFields"):
        return None
    pairs: dict[str, str] = {}
    for expression in term.get("matchExpressions") or []:
        values = expression.get("values") or []
        if expression.get("operator") != "In" or len(values) != 1:
            return None
        pairs[str(expression.get("key", ""))] = str(values[0])
    return make_segment(pairs)


class Topology(Protocol):
    """What the capacity controller needs of a segment source."""

    def segments(self) -> list[Segment]: ...

    def add_callback(self, callback: Callback) -> None: ...

    async def wait_synced(self) -> None: ...

    async def run(self) -> None: ...


class FixedTopology:
    """One segment, forever (`--node-deployment`)."""

    def __init__(self, segment: Segment) -> None:
        self._segments = [segment]

    def segments(self) -> list[Segment]:
        return list(self._segments)

    def add_callback(self, callback: Callback) -> None:
        """Nothing ever changes."""

    async def wait_synced(self) -> None:
        return

    async def run(self) -> None:
        return


class NodeTopology:
    """Segments of the driver's nodes, from the CSINode and Node informers (see the module docstring)."""

    def __init__(self, *, driver: str, csinodes: Informer, nodes: Informer, metrics: Metrics) -> None:
        self.driver = driver
        self.csinodes = csinodes
        self.nodes = nodes
        self._segments: list[Segment] = []
        self._callbacks: list[Callback] = []
        self._synced = asyncio.Event()
        self.queue: WorkQueue[str] = WorkQueue(
            "csitopology", limiter=ItemExponential(1.0, 300.0), metrics=metrics.workqueue("csitopology")
        )
        nodes.add_handler(FuncHandler(add=self._changed, update=self._node_updated, delete=self._changed))
        csinodes.add_handler(
            FuncHandler(add=self._changed, update=self._csinode_updated, delete=self._changed)
        )

    def _changed(self, _: Obj) -> None:
        self.queue.add("")

    def _node_updated(self, old: Obj, new: Obj) -> None:
        if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
            self.queue.add("")

    def _csinode_updated(self, old: Obj, new: Obj) -> None:
        if self._keys(old) != self._keys(new):
            self.queue.add("")

    def _keys(self, csinode: Obj) -> list[str] | None:
        """The driver's topology keys on this CSINode; None when the driver is not registered there."""
        for entry in (csinode.get("spec") or {}).get("drivers") or []:
            if entry.get("name") == self.driver:
                return topology_keys(csinode, self.driver)
        return None

    def segments(self) -> list[Segment]:
        return list(self._segments)

    def add_callback(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def run(self) -> None:
        """Recompute once now (the informers have synced), then on every change, until cancelled."""
        await self.csinodes.wait_synced()
        await self.nodes.wait_synced()
        self.sync()
        self._synced.set()
        await run_workers(self.queue, self._sync_key, name="csitopology", count=1)

    async def _sync_key(self, _: str) -> None:
        self.sync()

    def compute(self) -> list[Segment]:
        found: dict[Segment, None] = {}
        for csinode in self.csinodes.store:
            keys = self._keys(csinode)
            if keys is None:
                continue
            node = self.nodes.get(str((csinode.get("metadata") or {}).get("name", "")))
            if node is None:
                continue
            labels = (node.get("metadata") or {}).get("labels") or {}
            if any(key not in labels for key in keys):
                continue
            found.setdefault(make_segment({key: labels[key] for key in keys}))
        return list(found)

    def sync(self) -> None:
        """upstream `nodeTopology.sync`: recompute, keep known segments, tell the callbacks what changed."""
        old, new = self._segments, self.compute()
        old_set, new_set = set(old), set(new)
        added = [s for s in new if s not in old_set]
        removed = [s for s in old if s not in new_set]
        self._segments = [s for s in old if s in new_set] + added
        if added or removed:
            log.info("topology changed", added=added, removed=removed, v=5)
            for callback in list(self._callbacks):
                callback(added, removed)
