"""Event recording as client-go's `record.EventRecorder` writes core/v1 Events, with its deduplication.

An event is named `<object name>.<hex unix nanoseconds>` and lives in the object's namespace
("default" for cluster-scoped objects). A repeat of the same (source, object, type, reason, message)
is not a new Event: the existing one gets `count + 1` and a new `lastTimestamp` by a patch, as the
event correlator does (golden `16-events.json`: the PV controller's ExternalProvisioning with count 2).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import structlog

from testbed.apiserver import ApiError, NotFound, Store

log = structlog.get_logger(__name__)
Obj = dict[str, Any]

NORMAL = "Normal"
WARNING = "Warning"


def go_time(now: float | None = None) -> str:
    """`metav1.Time` as Go renders it: RFC 3339, seconds, `Z`."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def object_reference(obj: Obj) -> Obj:
    """`reference.GetReference`: kind, namespace, name, uid, apiVersion, resourceVersion."""
    meta = obj.get("metadata") or {}
    ref: Obj = {"kind": obj.get("kind", ""), "apiVersion": obj.get("apiVersion", "")}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    ref |= {"name": meta.get("name", ""), "uid": meta.get("uid", "")}
    if meta.get("resourceVersion"):
        ref["resourceVersion"] = meta["resourceVersion"]
    return ref


class EventRecorder:
    """Writes Events for one component (`source.component`), optionally on one host (kubelet)."""

    def __init__(self, store: Store, component: str, *, host: str = "") -> None:
        self.store = store
        self.component = component
        self.host = host
        self._seen: dict[tuple[str, ...], tuple[str, str]] = {}
        """Correlation key -> (namespace, event name) of the Event to bump on a repeat."""

    async def event(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        """Record an event about `obj`; failures are logged, never raised (events are best effort)."""
        ref = object_reference(obj)
        namespace = ref.get("namespace") or "default"
        key: tuple[str, ...] = (self.component, self.host, ref["kind"], namespace, ref["name"], ref["uid"])
        key += (event_type, reason, message)
        now = go_time()
        try:
            if key in self._seen and await self._bump(key, now):
                return
            name = f"{ref['name']}.{time.time_ns():x}"
            source: Obj = {"component": self.component}
            if self.host:
                source["host"] = self.host
            created = await self.store.create(
                "events",
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": ref,
                    "reason": reason,
                    "message": message,
                    "type": event_type,
                    "source": source,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                    "reportingComponent": self.component,
                    "reportingInstance": self.host,
                },
                namespace=namespace,
            )
            self._seen[key] = (namespace, created["metadata"]["name"])
        except ApiError as exc:
            log.info("could not record event", reason=reason, object=ref["name"], error=str(exc))

    async def _bump(self, key: tuple[str, ...], now: str) -> bool:
        namespace, name = self._seen[key]
        try:
            current = await self.store.get("events", name, namespace=namespace)
            patch = {"count": int(current.get("count") or 1) + 1, "lastTimestamp": now}
            await self.store.patch("events", name, patch, patch_type="strategic", namespace=namespace)
        except NotFound:
            del self._seen[key]
            return False
        return True
