"""Informers against the test bed: sync, resume without loss, relist after 410, pagination, indexes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kit import eventually

from common.kube import informer as informer_module
from common.kube.client import KubeClient
from common.kube.informer import FuncHandler, Informer, InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
from testbed.apiserver import ApiServer


def pvc(name: str, namespace: str = "default", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


class Recorder:
    """Collects what handlers saw, and replays it into a dict to compare with the server."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.view: dict[str, str] = {}

    def handler(self) -> FuncHandler:
        return FuncHandler(add=self.add, update=self.update, delete=self.delete)

    def add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"]))
        self.view[obj["metadata"]["name"]] = obj["metadata"]["resourceVersion"]

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"]))
        self.view[new["metadata"]["name"]] = new["metadata"]["resourceVersion"]

    def delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"]))
        self.view.pop(obj["metadata"]["name"], None)


def informer_lists(apiserver: ApiServer) -> int:
    """Lists sent by informers (they page with `limit`; the test's own reads do not)."""
    return sum(
        1
        for r in apiserver.requests.records()
        if r.verb == "list" and r.resource == "persistentvolumeclaims" and "limit=" in r.path
    )


async def server_view(kube: KubeClient) -> dict[str, str]:
    listed = await kube.list(PERSISTENT_VOLUME_CLAIMS, namespace="default")
    return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in listed["items"]}


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    """Without the protection admission plugin, so a delete removes a PVC at once."""
    async with ApiServer(bookmark_interval=0.2, storage_object_in_use_protection=False) as server:
        yield server


@pytest.fixture
async def running(kube: KubeClient) -> AsyncIterator[tuple[Informer, Recorder]]:
    informer = Informer(kube, PERSISTENT_VOLUME_CLAIMS, namespace="default")
    recorder = Recorder()
    informer.add_handler(recorder.handler())
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="informer under test")
        await asyncio.wait_for(informer.wait_synced(), 5)
        yield informer, recorder
        task.cancel()


async def converged(kube: KubeClient, informer: Informer, recorder: Recorder) -> None:
    async def same() -> bool:
        expected = await server_view(kube)
        cached = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.store.list()}
        return expected == cached == recorder.view

    await eventually(same, timeout=10, message="informer cache equal to the server")


async def test_initial_list_then_watch(kube: KubeClient) -> None:
    for i in range(3):
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc(f"pre-{i}"))
    informer = Informer(kube, PERSISTENT_VOLUME_CLAIMS, namespace="default")
    recorder = Recorder()
    informer.add_handler(recorder.handler())
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="informer under test")
        await asyncio.wait_for(informer.wait_synced(), 5)
        assert sorted(recorder.events) == [("add", "pre-0"), ("add", "pre-1"), ("add", "pre-2")]
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("live"))
        await kube.patch(
            PERSISTENT_VOLUME_CLAIMS, "pre-0", {"metadata": {"labels": {"x": "y"}}}, namespace="default"
        )
        await kube.delete(PERSISTENT_VOLUME_CLAIMS, "pre-1", namespace="default")
        await converged(kube, informer, recorder)
        assert ("update", "pre-0") in recorder.events
        task.cancel()


async def test_late_handler_gets_cached_objects_as_adds(
    running: tuple[Informer, Recorder], kube: KubeClient
) -> None:
    informer, recorder = running
    await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("x"))
    await converged(kube, informer, recorder)
    late = Recorder()
    informer.add_handler(late.handler())
    assert late.events == [("add", "x")]


async def test_resume_after_forced_disconnect_loses_no_event(
    running: tuple[Informer, Recorder], kube: KubeClient, apiserver: ApiServer
) -> None:
    informer, recorder = running
    lists_before = informer_lists(apiserver)
    for round_ in range(5):
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc(f"r{round_}"))
        apiserver.close_watches()
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc(f"during-{round_}"))
        await kube.delete(PERSISTENT_VOLUME_CLAIMS, f"r{round_}", namespace="default")
    await converged(kube, informer, recorder)
    assert [e for e in recorder.events if e[0] == "delete"] == [("delete", f"r{i}") for i in range(5)]
    # resumed from the last resourceVersion: no relist was needed
    assert informer_lists(apiserver) == lists_before


async def test_410_relist_emits_deletes_missed_while_away(
    running: tuple[Informer, Recorder],
    kube: KubeClient,
    apiserver: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    informer, recorder = running
    for i in range(4):
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc(f"k{i}"))
    await converged(kube, informer, recorder)
    # Take the server down, change things, compact history: the informer's RV is now too old.
    await apiserver.stop_http()
    await apiserver.store.delete("persistentvolumeclaims", "k0", namespace="default")
    await apiserver.store.delete("persistentvolumeclaims", "k1", namespace="default")
    await apiserver.store.create("persistentvolumeclaims", pvc("new"), namespace="default")
    apiserver.compact()
    await apiserver.start_http()
    await converged(kube, informer, recorder)
    assert ("delete", "k0") in recorder.events and ("delete", "k1") in recorder.events
    assert ("add", "new") in recorder.events
    assert informer.has_synced


async def test_expired_watch_relists_consistently(
    running: tuple[Informer, Recorder], kube: KubeClient, apiserver: ApiServer
) -> None:
    informer, recorder = running
    apiserver.faults.expire_next_watches(1)
    apiserver.close_watches()
    await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("after-410"))
    await converged(kube, informer, recorder)
    lists = [
        r for r in apiserver.requests.records() if r.verb == "list" and r.resource == "persistentvolumeclaims"
    ]
    assert len(lists) >= 2  # the initial list and the relist after 410


async def test_bookmarks_advance_the_resource_version(
    running: tuple[Informer, Recorder], kube: KubeClient, apiserver: ApiServer
) -> None:
    informer, _ = running
    await kube.create(
        PERSISTENT_VOLUMES,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "elsewhere"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "csi": {"driver": "d", "volumeHandle": "h"},
            },
        },
    )
    target = str(apiserver.store.resource_version)
    await eventually(lambda: int(informer.resource_version) >= int(target), timeout=5, message="bookmark")


async def test_pagination_and_selectors(kube: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer_module, "PAGE_SIZE", 3)
    for i in range(10):
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc(f"p{i}", labels={"app": "a" if i % 2 else "b"}))
    informer = Informer(kube, PERSISTENT_VOLUME_CLAIMS, label_selector="app=a")
    async with asyncio.TaskGroup() as group:
        task = group.create_task(informer.run(), name="paged informer")
        await asyncio.wait_for(informer.wait_synced(), 5)
        assert sorted(o["metadata"]["name"] for o in informer.store) == [f"p{i}" for i in (1, 3, 5, 7, 9)]
        task.cancel()


async def test_indexes_follow_changes(running: tuple[Informer, Recorder], kube: KubeClient) -> None:
    informer, recorder = running
    informer.add_index("app", lambda o: [o["metadata"].get("labels", {}).get("app", "")])
    await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("i1", labels={"app": "one"}))
    await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("i2", labels={"app": "one"}))
    await converged(kube, informer, recorder)
    assert sorted(o["metadata"]["name"] for o in informer.store.by_index("app", "one")) == ["i1", "i2"]
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, "i1", {"metadata": {"labels": {"app": "two"}}}, namespace="default"
    )
    await converged(kube, informer, recorder)
    assert [o["metadata"]["name"] for o in informer.store.by_index("app", "one")] == ["i2"]
    assert [o["metadata"]["name"] for o in informer.store.by_index("app", "two")] == ["i1"]


async def test_factory_shares_one_watch_per_resource(kube: KubeClient, apiserver: ApiServer) -> None:
    factory = InformerFactory(kube, resync=0.1)
    first = factory.informer(PERSISTENT_VOLUME_CLAIMS)
    assert factory.informer(PERSISTENT_VOLUME_CLAIMS) is first
    resyncs: list[str] = []
    first.add_handler(FuncHandler(update=lambda old, new: resyncs.append(new["metadata"]["name"])))
    await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("shared"))

    async def run_factory() -> None:
        async with asyncio.TaskGroup() as inner:
            factory.start(inner)

    async with asyncio.TaskGroup() as group:
        runner = group.create_task(run_factory(), name="factory")
        await asyncio.wait_for(factory.wait_synced(), 5)
        await eventually(lambda: resyncs.count("shared") >= 2, timeout=5, message="periodic resync")
        runner.cancel()
    # a watch is logged when it ends: exactly one was open for the shared informer
    await eventually(
        lambda: apiserver.requests.count(verb="watch", resource="persistentvolumeclaims") == 1, timeout=5
    )
