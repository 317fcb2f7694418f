"""Event recorder: core/v1 Events on the objects a sidecar works on, as client-go's recorder writes them.

Recording never blocks a reconcile: `event()` puts the Event on a bounded queue and `run()` (a named
task of the process) writes it. Like client-go's `EventCorrelator`:

* the same event again (same object, type, reason, message and source) within 10 minutes bumps
  `count` and `lastTimestamp` of the existing Event with a PATCH, instead of creating another one;
* a source+object pair gets a token bucket (burst 25, one more token every 5 minutes), so a failing
  loop cannot flood the API server: extra events are dropped and counted in the log.

Event names are `<object name>.<hex nanoseconds>`, and an Event about a cluster-scoped object (a PV,
a VolumeAttachment) lives in the `default` namespace, as with client-go.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.kube.client import ApiError, KubeClient
from common.kube.resources import EVENTS
from common.logging import get_logger

log = get_logger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
SIMILAR_WINDOW = 600.0
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
CACHE_SIZE = 4096
QUEUE_SIZE = 1000


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_reference(obj: dict[str, Any]) -> dict[str, str]:
    """The `involvedObject` of an Event about `obj` (apiVersion, kind, name, namespace, uid, rv)."""
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": str(obj.get("apiVersion", "")),
        "kind": str(obj.get("kind", "")),
        "name": str(meta.get("name", "")),
    }
    if meta.get("namespace"):
        ref["namespace"] = str(meta["namespace"])
    for field, key in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
        if meta.get(key):
            ref[field] = str(meta[key])
    return ref


@dataclass(slots=True)
class _Seen:
    name: str
    namespace: str
    count: int
    first: str
    last_monotonic: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class EventRecorder:
    """Writes Events with `source.component = component` (e.g. `external-resizer <driver>`)."""

    def __init__(self, client: KubeClient, *, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.dropped = 0

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """Record an event about `obj` (queued; written by `run`)."""
        ref = object_reference(obj)
        if not self._allow(ref):
            self.dropped += 1
            log.info("event dropped by the spam filter", object=ref["name"], reason=reason, v=4)
            return
        try:
            self._queue.put_nowait({"ref": ref, "type": event_type, "reason": reason, "message": message})
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event queue full, dropping event", object=ref["name"], reason=reason)

    def _allow(self, ref: dict[str, str]) -> bool:
        key = "/".join(
            (self.component, ref.get("namespace", ""), ref["kind"], ref["name"], ref.get("uid", ""))
        )
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=SPAM_BURST, stamp=now)
            if len(self._buckets) > CACHE_SIZE:
                self._buckets.popitem(last=False)
        bucket.tokens = min(SPAM_BURST, bucket.tokens + (now - bucket.stamp) / SPAM_REFILL_SECONDS)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    async def run(self) -> None:
        """Write queued events until cancelled."""
        while True:
            item = await self._queue.get()
            try:
                await self._write(item["ref"], item["type"], item["reason"], item["message"])
            except ApiError as exc:
                log.info(
                    "could not write event", object=item["ref"]["name"], reason=item["reason"], error=str(exc)
                )

    async def flush(self) -> None:
        """Write everything queued now (used on shutdown and by tests)."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            try:
                await self._write(item["ref"], item["type"], item["reason"], item["message"])
            except ApiError as exc:
                log.info("could not write event", object=item["ref"]["name"], error=str(exc))

    async def _write(self, ref: dict[str, str], event_type: str, reason: str, message: str) -> None:
        namespace = ref.get("namespace") or "default"
        key = (namespace, ref["kind"], ref["name"], ref.get("uid", ""), event_type, reason, message)
        now = _now()
        seen = self._seen.get(key)
        if seen is not None and time.monotonic() - seen.last_monotonic < SIMILAR_WINDOW:
            seen.count += 1
            seen.last_monotonic = time.monotonic()
            try:
                await self.client.patch(
                    EVENTS,
                    seen.name,
                    {"count": seen.count, "lastTimestamp": now},
                    namespace=seen.namespace,
                    patch_type="strategic",
                )
                self._seen.move_to_end(key)
                return
            except ApiError as exc:
                if not exc.not_found:
                    raise
                del self._seen[key]
        name = f"{ref['name']}.{time.time_ns():x}"
        source: dict[str, str] = {"component": self.component}
        if self.host:
            source["host"] = self.host
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": event_type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": None,
            "source": source,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        await self.client.create(EVENTS, body)
        self._seen[key] = _Seen(name, namespace, 1, now, time.monotonic())
        if len(self._seen) > CACHE_SIZE:
            self._seen.popitem(last=False)
