"""Observing the cluster: snapshots of every object the invariants judge, taken every second.

A `Snapshot` holds the soak namespace's claims and pods, all PVs and VolumeAttachments, the three
Leases, the driver's backend state and the API server's state, read close together. The `Observer`
takes one every `interval` seconds and hands it to its listeners (the churn's bookkeeping, the lease
tracker, the progress line); `LeaseTracker` remembers, per Lease, the longest time a dead identity
kept holding it past its expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.kube.resources import (
    LEASES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    VOLUME_ATTACHMENTS,
)
from testbed.chaos.clients import Api, Control
from testbed.chaos.fleet import LEASES as LEASE_NAMES
from testbed.chaos.fleet import NAMESPACE, Fleet

Obj = dict[str, Any]


def by_name(items: list[Obj]) -> dict[str, Obj]:
    return {item["metadata"]["name"]: item for item in items}


@dataclass
class Snapshot:
    """The cluster at one moment (see the module docstring)."""

    at: float
    """Wall-clock time (seconds since the epoch) the reads began."""
    claims: dict[str, Obj]
    volumes: dict[str, Obj]
    attachments: dict[str, Obj]
    pods: dict[str, Obj]
    leases: dict[str, Obj | None]
    """Component → its Lease (None while nobody created it)."""
    driver: Obj
    """The driver's `/state`: volumes, publications, serving..."""
    apiserver: Obj
    """The API server's `/testbed/state`: store counters, open watches, pending faults."""

    @property
    def driver_volumes(self) -> list[Obj]:
        found: list[Obj] = self.driver.get("volumes") or []
        return found

    def open_watches(self) -> int:
        return sum((self.apiserver.get("store") or {}).get("watches", {}).values())


async def take(api: Api, control: Control) -> Snapshot:
    """Read everything once."""
    at = time.time()

    async def lease(name: str) -> Obj | None:
        return await api.get(LEASES, name, namespace=NAMESPACE)

    claims, volumes, attachments, pods, driver, apiserver, *leases = await asyncio.gather(
        api.items(PERSISTENT_VOLUME_CLAIMS, NAMESPACE),
        api.items(PERSISTENT_VOLUMES),
        api.items(VOLUME_ATTACHMENTS),
        api.items(PODS, NAMESPACE),
        control.driver_call("GET", "state"),
        control.apiserver_call("GET", "state"),
        *(lease(name) for name in LEASE_NAMES.values()),
    )
    return Snapshot(
        at=at,
        claims=by_name(claims),
        volumes=by_name(volumes),
        attachments=by_name(attachments),
        pods=by_name(pods),
        leases=dict(zip(LEASE_NAMES, leases, strict=True)),
        driver=driver,
        apiserver=apiserver,
    )


def micro_time(value: str | None) -> float | None:
    """A Lease's `renewTime` (RFC 3339 with microseconds) as seconds since the epoch."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class LeaseTracker:
    """Per component: the longest a dead identity held its Lease past expiry (renewTime + duration)."""

    fleet: Fleet
    worst: dict[str, float] = field(default_factory=dict)
    """Component → seconds past expiry (0 when never seen)."""
    worst_holder: dict[str, str] = field(default_factory=dict)

    def observe(self, snap: Snapshot) -> None:
        for component, lease in snap.leases.items():
            self.worst.setdefault(component, 0.0)
            spec = (lease or {}).get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            renewed = micro_time(spec.get("renewTime"))
            if not holder or renewed is None or self.fleet.alive(holder):
                continue
            overdue = snap.at - (renewed + float(spec.get("leaseDurationSeconds") or 0))
            if overdue > self.worst[component]:
                self.worst[component] = overdue
                self.worst_holder[component] = holder


Listener = Callable[[Snapshot], None]


@dataclass
class Observer:
    """Takes a snapshot every `interval` seconds and hands it to the listeners."""

    api: Api
    control: Control
    interval: float = 1.0
    listeners: list[Listener] = field(default_factory=list)
    latest: Snapshot | None = None
    failures: int = 0

    async def once(self) -> Snapshot:
        snap = await take(self.api, self.control)
        self.latest = snap
        for listener in self.listeners:
            listener(snap)
        return snap

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:  # an unreachable API server (a fault) is a gap in the record, not an end
                self.failures += 1
            await asyncio.sleep(self.interval)


@dataclass
class RequestCollector:
    """Keeps every request record the API server logged (its log is bounded; this reads it often)."""

    control: Control
    records: list[Obj] = field(default_factory=list)
    _seen: set[tuple[Any, ...]] = field(default_factory=set)

    async def collect(self) -> None:
        answer = await self.control.apiserver_call("GET", "requests")
        for record in answer.get("requests") or ():
            key = (record["time"], record["path"], record["verb"], record["user_agent"], record["code"])
            if key not in self._seen:
                self._seen.add(key)
                self.records.append(record)

    async def run(self, interval: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.collect()
            except Exception:  # the API server is restarting: the next round reads what it kept
                continue
