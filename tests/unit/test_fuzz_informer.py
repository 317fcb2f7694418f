"""Malformed objects from the API server (fuzzed): logged with their name and skipped; the informer runs on.

An informer fed, by list and by watch, objects with missing fields and wrong types among good ones
must keep the good ones, hand only those to the handlers, name each bad one in a warning, and stay
running; a controller on top of it (the provisioner's claim controller, whose index reads the
claim's UID) keeps syncing the good claims. Also: a watch event for the resourceVersion the cache
already holds (the controller wrote its answer through) is not announced as an update.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_provisioner_claim import make, pvc

from common.kube.informer import FuncHandler, Informer
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS

Obj = dict[str, Any]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
not_string = json_values.filter(lambda v: v is not None and not isinstance(v, str))
not_object = json_values.filter(lambda v: v is not None and not isinstance(v, dict))
not_a_name = json_values.filter(lambda v: not isinstance(v, str)) | st.just("")
not_a_string_map = not_object | st.dictionaries(st.text(max_size=4), not_string, min_size=1, max_size=2)
not_a_string_list = not_object.filter(lambda v: not isinstance(v, list)) | st.lists(
    not_string, min_size=1, max_size=2
)
WRONG = {
    ("metadata",): json_values.filter(lambda v: not isinstance(v, dict)),
    ("metadata", "name"): not_a_name,
    ("metadata", "namespace"): not_string,
    ("metadata", "uid"): not_string,
    ("metadata", "resourceVersion"): not_string,
    ("metadata", "annotations"): not_a_string_map,
    ("metadata", "labels"): not_a_string_map,
    ("metadata", "finalizers"): not_a_string_list,
    ("spec",): not_object,
    ("status",): not_object,
}


def claim(name: str, rv: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": str(rv)},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "sc"},
        "status": {"phase": "Pending"},
    }


@st.composite
def malformed(draw: st.DrawFn) -> Any:
    """Junk, or a claim with one metadata/spec/status field of the wrong shape."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    obj = claim(f"bad-{draw(st.integers(0, 99))}", 50)
    path = draw(st.sampled_from(sorted(WRONG)))
    target = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = draw(WRONG[path])
    return obj


class FakeClient:
    """`list` answers one page; `watch` streams what the test puts in `events`, then ends."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.events: asyncio.Queue[Any] = asyncio.Queue()

    async def list(self, resource: Any, **kw: Any) -> Obj:
        return {"metadata": {"resourceVersion": "100"}, "items": self.items}

    async def watch(self, path: str, *, query: Any, inactivity_timeout: float) -> AsyncIterator[Obj]:
        while True:
            event = await self.events.get()
            if event is None:
                return
            yield event


async def run_informer(
    items: list[Any], events: list[Any]
) -> tuple[Informer, list[str], list[dict[str, Any]]]:
    client = FakeClient(items)
    informer = Informer(client, PERSISTENT_VOLUME_CLAIMS)  # type: ignore[arg-type]
    informer.add_index("uid", lambda obj: [str(obj["metadata"].get("uid", ""))])
    seen: list[str] = []
    informer.add_handler(FuncHandler(add=lambda o: seen.append(o["metadata"]["name"]),
                                     update=lambda _, o: seen.append(o["metadata"]["name"])))  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        task = asyncio.get_running_loop().create_task(informer.run(), name="fuzzed informer")
        try:
            await asyncio.wait_for(informer.wait_synced(), 1)
            for event in events:
                client.events.put_nowait(event)
            for _ in range(50):
                await asyncio.sleep(0)
                if client.events.empty():
                    break
            await asyncio.sleep(0)
            assert not task.done(), task.exception() if task.done() else ""
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return informer, seen, logs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_listed=st.lists(malformed(), max_size=3), bad_watched=st.lists(malformed(), max_size=3))
async def test_malformed_objects_are_skipped_and_named(bad_listed: list[Any], bad_watched: list[Any]) -> None:
    items = [claim("good-1", 10), *bad_listed, claim("good-2", 11)]
    events = [{"type": "ADDED", "object": b} for b in bad_watched]
    events.append({"type": "ADDED", "object": claim("good-3", 120)})
    informer, seen, logs = await run_informer(items, events)
    assert sorted(informer.store.list_keys()) == ["default/good-1", "default/good-2", "default/good-3"]
    assert sorted(seen) == ["good-1", "good-2", "good-3"]
    skipped = [e for e in logs if e["event"] == "skipping malformed object"]
    assert len(skipped) == len(bad_listed) + len(bad_watched)
    for entry in skipped:
        assert entry["resource"] == "persistentvolumeclaims" and "name" in entry and entry["problem"]


async def test_a_watch_event_for_what_the_cache_already_holds_is_not_an_update() -> None:
    written = claim("mine", 130)
    client = FakeClient([claim("mine", 10)])
    informer = Informer(client, PERSISTENT_VOLUME_CLAIMS)  # type: ignore[arg-type]
    updates: list[tuple[str, str]] = []
    informer.add_handler(
        FuncHandler(
            update=lambda old, new: updates.append(
                (old["metadata"]["resourceVersion"], new["metadata"]["resourceVersion"])
            )
        )
    )
    task = asyncio.get_running_loop().create_task(informer.run(), name="write-through informer")
    try:
        await asyncio.wait_for(informer.wait_synced(), 1)
        informer.store.put(copy.deepcopy(written))  # what the resizer's Writer does with a patch answer
        client.events.put_nowait({"type": "MODIFIED", "object": copy.deepcopy(written)})
        client.events.put_nowait({"type": "MODIFIED", "object": claim("mine", 140)})
        for _ in range(20):
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert updates == [("130", "140")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.lists(malformed(), min_size=1, max_size=3))
async def test_the_claim_controller_provisions_a_good_claim_among_malformed_ones(bad: list[Any]) -> None:
    claims, controller, kube, _, _ = make()
    client = FakeClient([*bad, pvc()])
    claims.claims.client = client  # type: ignore[assignment]
    for informer in (claims.volumes, claims.classes):
        informer._synced.set()
    with structlog.testing.capture_logs() as logs:
        informer_task = asyncio.get_running_loop().create_task(claims.claims.run(), name="claims informer")
        workers = asyncio.get_running_loop().create_task(claims.run(), name="claim workers")
        try:
            for _ in range(200):
                await asyncio.sleep(0)
                if ("create", "persistentvolumes", "pvc-" + pvc()["metadata"]["uid"]) in kube.writes:
                    break
            for event in bad:
                client.events.put_nowait({"type": "MODIFIED", "object": event})
            for _ in range(20):
                await asyncio.sleep(0)
            assert not informer_task.done() and not workers.done()
        finally:
            for task in (informer_task, workers):
                task.cancel()
            await asyncio.gather(informer_task, workers, return_exceptions=True)
    assert ("create", "persistentvolumes", "pvc-" + pvc()["metadata"]["uid"]) in kube.writes
    assert len(controller.requests["CreateVolume"]) == 1
    skipped = [e for e in logs if e["event"] == "skipping malformed object"]
    assert len(skipped) == 2 * len(bad)
    assert not [e for e in logs if e.get("log_level") == "error"], logs
