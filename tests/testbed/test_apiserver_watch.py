"""Lists and watches from the store: resumption, selectors, bookmarks, pagination snapshots, 410s."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from testbed.apiserver import BadRequest, Expired, Store, Watch, WatchEvent
from testbed.apiserver.listing import ListOptions

CM = "configmaps"


def configmap(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}}


async def take(watch: Watch, count: int) -> list[WatchEvent]:
    async with asyncio.timeout(2):
        return [await anext(watch) for _ in range(count)]


async def nothing_more(watch: Watch) -> bool:
    try:
        async with asyncio.timeout(0.05):
            await anext(watch)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def store() -> Store:
    return Store(bookmark_interval=0.05)


async def test_watch_resumes_after_a_resource_version(store: Store) -> None:
    first = await store.create(CM, configmap("a"), namespace="default")
    await store.patch(CM, "a", {"data": {"k": "v"}}, namespace="default")
    await store.create(CM, configmap("b"), namespace="default")
    async with store.watch(CM, first["metadata"]["resourceVersion"], namespace="default") as watch:
        events = await take(watch, 2)
        assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("MODIFIED", "a"), ("ADDED", "b")]
        await store.delete(CM, "a", namespace="default")
        (deleted,) = await take(watch, 1)
        assert deleted.type == "DELETED" and deleted.object["metadata"]["resourceVersion"] == str(
            store.resource_version
        )
        assert await nothing_more(watch)


async def test_watch_from_zero_starts_with_synthetic_adds(store: Store) -> None:
    await store.create(CM, configmap("a"), namespace="default")
    await store.create(CM, configmap("b"), namespace="kube-system")
    async with store.watch(CM, "0") as watch:
        events = await take(watch, 2)
        assert {(e.type, e.object["metadata"]["name"]) for e in events} == {("ADDED", "a"), ("ADDED", "b")}
    async with store.watch(
        CM, "", namespace="default", send_initial_events=True, allow_bookmarks=True
    ) as watch:
        added, bookmark = await take(watch, 2)
        assert added.type == "ADDED" and bookmark.type == "BOOKMARK"
        assert bookmark.object["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_selectors_turn_transitions_into_added_and_deleted(store: Store) -> None:
    await store.create(CM, configmap("a", app="x"), namespace="default")
    async with store.watch(CM, "0", label_selector="app=x") as watch:
        assert (await take(watch, 1))[0].type == "ADDED"
        await store.patch(CM, "a", {"metadata": {"labels": {"app": "y"}}}, namespace="default")
        await store.create(CM, configmap("other", app="z"), namespace="default")
        await store.patch(CM, "a", {"metadata": {"labels": {"app": "x"}}}, namespace="default")
        left, back = await take(watch, 2)
        assert (left.type, back.type) == ("DELETED", "ADDED")
        assert left.object["metadata"]["labels"] == {"app": "y"}


async def test_bookmarks_carry_only_the_resource_version(store: Store) -> None:
    async with store.watch(CM, str(store.resource_version), allow_bookmarks=True) as watch:
        await store.create("persistentvolumes", _pv(), namespace="")
        (bookmark,) = await take(watch, 1)
    assert bookmark == WatchEvent(
        "BOOKMARK",
        {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(store.resource_version)},
        },
    )


def _pv() -> dict[str, Any]:
    spec = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "csi": {"driver": "d", "volumeHandle": "h"},
    }
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"}, "spec": spec}


async def test_a_watch_older_than_the_history_is_expired() -> None:
    store = Store(history_size=3)
    start = store.resource_version
    for index in range(4):
        await store.create(CM, configmap(f"c{index}"), namespace="default")
    with pytest.raises(Expired) as expired:
        store.watch(CM, str(start))
    assert expired.value.status["message"] == f"too old resource version: {start} ({start + 1})"
    assert expired.value.status["code"] == 410
    store.watch(CM, str(start + 1)).close()
    store.compact()
    with pytest.raises(Expired):
        store.watch(CM, str(start + 1))


async def test_close_watches_ends_iteration(store: Store) -> None:
    watch = store.watch(CM, str(store.resource_version))
    assert store.close_watches() == 1
    assert [event async for event in watch] == []


async def test_pages_come_from_one_consistent_snapshot(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.create(CM, configmap(name), namespace="default")
    first = await store.list(CM, namespace="default", limit=2)
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 1 and "kind" not in first["items"][0]
    await store.delete(CM, "c", namespace="default")
    await store.create(CM, configmap("d"), namespace="default")
    rest = await store.list(CM, namespace="default", limit=2, continue_token=first["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"]
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert "continue" not in rest["metadata"]
    store.compact()
    with pytest.raises(Expired) as expired:
        await store.list(CM, namespace="default", limit=2, continue_token=first["metadata"]["continue"])
    assert expired.value.status["metadata"]["continue"], "the answer offers an inconsistent continuation"


async def test_list_selectors(store: Store) -> None:
    await store.create(CM, configmap("a", tier="web", env="prod"), namespace="default")
    await store.create(CM, configmap("b", tier="db"), namespace="default")
    await store.create(CM, configmap("c"), namespace="kube-system")

    async def names(*, label_selector: str = "", field_selector: str = "", namespace: str = "") -> list[str]:
        listed = await store.list(
            CM, label_selector=label_selector, field_selector=field_selector, namespace=namespace
        )
        return [i["metadata"]["name"] for i in listed["items"]]

    assert await names(label_selector="tier in (web,db)") == ["a", "b"]
    assert await names(label_selector="tier notin (web),!env") == ["b", "c"]
    assert await names(label_selector="tier!=web") == ["b", "c"]
    assert await names(label_selector="env,tier=web") == ["a"]
    assert await names(field_selector="metadata.namespace=kube-system") == ["c"]
    assert await names(field_selector="metadata.name!=a", namespace="default") == ["b"]
    with pytest.raises(BadRequest, match="is not a known field selector"):
        await store.list(CM, field_selector="data.x=1")
    with pytest.raises(BadRequest, match=r"field label not supported: metadata\.namespace"):
        await store.list("nodes", field_selector="metadata.namespace=x")


async def test_pods_select_by_node(store: Store) -> None:
    for name, node in (("p1", "n1"), ("p2", "n2")):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
        }
        await store.create("pods", pod, namespace="default")
    listed = await store.list("pods", field_selector="spec.nodeName=n2,status.phase=Pending")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["p2"]


async def test_list_at_an_exact_resource_version(store: Store) -> None:
    created = await store.create(CM, configmap("a"), namespace="default")
    await store.delete(CM, "a", namespace="default")
    rv = created["metadata"]["resourceVersion"]
    entries, meta = store.list_entries(
        store.rtype(CM), ListOptions(resource_version=rv, resource_version_match="Exact"), namespace="default"
    )
    assert [e.obj["metadata"]["name"] for e in entries] == ["a"] and meta["resourceVersion"] == rv
