"""The HTTP API through kubernetes-asyncio, the way a Python program talks to a real cluster."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from testbed.apiserver import ApiServer

KubeClientFor = Callable[[ApiServer], Awaitable[client.ApiClient]]


def pvc(name: str, **labels: str) -> Any:
    """A claim as a plain dict (kubernetes-asyncio accepts dicts where it declares models)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body or b"{}")
    return body


async def test_crud_with_the_typed_client(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    created = await core.create_namespaced_persistent_volume_claim("default", pvc("data"))
    assert created.spec.volume_mode == "Filesystem" and created.metadata.finalizers == [
        "kubernetes.io/pvc-protection"
    ]
    patched = await core.patch_namespaced_persistent_volume_claim(
        "data", "default", {"metadata": {"annotations": {"a": "1"}}}
    )
    assert patched.metadata.annotations == {"a": "1"}
    created.metadata.labels = {"stale": "yes"}
    with pytest.raises(ApiException) as stale:
        await core.replace_namespaced_persistent_volume_claim("data", "default", created)
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"
    status = await core.patch_namespaced_persistent_volume_claim_status(
        "data", "default", {"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    )
    assert status.status.phase == "Bound"
    deleted = await core.delete_namespaced_persistent_volume_claim("data", "default")
    assert deleted.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_persistent_volume_claim("nope", "default")
    assert status_of(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'persistentvolumeclaims "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "persistentvolumeclaims"},
        "code": 404,
    }


async def test_other_groups_and_custom_resources(kube: client.ApiClient) -> None:
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="lock"), spec=client.V1LeaseSpec(holder_identity="me")
    )
    created = await client.CoordinationV1Api(kube).create_namespaced_lease("default", lease)
    assert created.spec.holder_identity == "me"
    custom = client.CustomObjectsApi(kube)
    snapshot = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "s"},
    }
    await custom.create_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", "default", "volumesnapshots", snapshot
    )
    patched = await custom.patch_namespaced_custom_object_status(
        "snapshot.storage.k8s.io",
        "v1",
        "default",
        "volumesnapshots",
        "s",
        {"status": {"readyToUse": True}},
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )
    assert patched["status"] == {"readyToUse": True}
    groups = await client.ApisApi(kube).get_api_versions()
    assert "snapshot.storage.k8s.io" in [g.name for g in groups.groups]


async def test_pagination_and_selectors_over_http(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    for index in range(5):
        await core.create_namespaced_persistent_volume_claim(
            "default", pvc(f"c{index}", parity=str(index % 2))
        )
    names, token = [], ""
    while True:
        page = await core.list_namespaced_persistent_volume_claim("default", limit=2, _continue=token)
        names += [item.metadata.name for item in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"c{i}" for i in range(5)]
    odd = await core.list_persistent_volume_claim_for_all_namespaces(label_selector="parity=1")
    assert [i.metadata.name for i in odd.items] == ["c1", "c3"]
    with pytest.raises(ApiException) as bad:
        await core.list_namespaced_persistent_volume_claim("default", field_selector="spec.volumeName=x")
    assert bad.value.status == 400 and status_of(bad.value)["reason"] == "BadRequest"


async def test_watch_resumes_and_bookmarks(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    first = await core.create_namespaced_persistent_volume_claim("default", pvc("a"))
    await core.create_namespaced_persistent_volume_claim("default", pvc("b"))
    events = []
    async with watch.Watch().stream(
        core.list_namespaced_persistent_volume_claim,
        "default",
        resource_version=first.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ) as stream:
        async for event in stream:
            events.append((event["type"], event["raw_object"]["metadata"].get("name")))
            if event["type"] == "BOOKMARK":
                break
    assert events == [("ADDED", "b"), ("BOOKMARK", None)]


async def test_watch_from_a_compacted_version_gets_410(apiserver: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    first = await core.create_namespaced_persistent_volume_claim("default", pvc("a"))
    await core.create_namespaced_persistent_volume_claim("default", pvc("b"))
    apiserver.compact()
    with pytest.raises(ApiException) as expired:
        async with watch.Watch().stream(
            core.list_namespaced_persistent_volume_claim,
            "default",
            resource_version=first.metadata.resource_version,
            timeout_seconds=5,
        ) as stream:
            async for _ in stream:
                pass
    assert expired.value.status == 410 and "too old resource version" in str(expired.value.reason)


async def test_raw_watch_lines_are_one_json_object_each(
    http: aiohttp.ClientSession, apiserver: ApiServer
) -> None:
    rv = apiserver.store.resource_version
    async with http.get(
        f"/api/v1/namespaces/default/persistentvolumeclaims?watch=true&resourceVersion={rv}"
    ) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        assert response.headers["Transfer-Encoding"] == "chunked"
        await apiserver.store.create("persistentvolumeclaims", pvc("x"), namespace="default")
        line = await asyncio.wait_for(response.content.readline(), 2)
    event = json.loads(line)
    assert event["type"] == "ADDED" and event["object"]["kind"] == "PersistentVolumeClaim"
    assert line.endswith(b"}\n") and line.count(b"\n") == 1


async def test_restart_keeps_state_and_port(apiserver: ApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    created = await core.create_namespaced_persistent_volume_claim("default", pvc("kept"))
    port = apiserver.port
    rv = apiserver.store.resource_version
    watcher = asyncio.create_task(
        _watch_until_closed(apiserver.url, created.metadata.resource_version), name="watch-during-restart"
    )
    await asyncio.sleep(0.05)
    await apiserver.restart(downtime=0.05)
    assert await asyncio.wait_for(watcher, 2) == "closed"
    assert apiserver.port == port and apiserver.store.resource_version == rv
    again = await core.read_namespaced_persistent_volume_claim("kept", "default")
    assert again.metadata.uid == created.metadata.uid


async def _watch_until_closed(url: str, rv: str) -> str:
    async with aiohttp.ClientSession() as session:
        path = f"{url}/api/v1/persistentvolumeclaims?watch=1&resourceVersion={rv}"
        async with session.get(path) as response:
            try:
                while await response.content.readline():
                    pass
            except aiohttp.ClientPayloadError:
                pass
    return "closed"


async def test_tls_with_bearer_token(kube_client_for: KubeClientFor) -> None:
    async with ApiServer(tls=True) as server:
        assert server.url.startswith("https://") and server.token and server.ca_cert is not None
        api = await kube_client_for(server)
        try:
            versions = await client.CoreApi(api).get_api_versions()
            assert versions.versions == ["v1"]
            namespaces = await client.CoreV1Api(api).list_namespace()
            assert "default" in [n.metadata.name for n in namespaces.items]
        finally:
            await api.close()
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/api/v1/namespaces", ssl=context) as response:
                assert response.status == 401
                assert (await response.json())["reason"] == "Unauthorized"
            headers = {"Authorization": f"Bearer {server.token}"}
            async with session.get(
                f"{server.url}/api/v1/namespaces", ssl=context, headers=headers
            ) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{server.url}/version")


async def test_discovery_and_openapi_documents(http: aiohttp.ClientSession) -> None:
    async with http.get("/apis/storage.k8s.io") as response:
        group = await response.json()
    assert group["kind"] == "APIGroup" and group["preferredVersion"]["groupVersion"] == "storage.k8s.io/v1"
    async with http.get("/openapi/v3") as response:
        root = await response.json()
    url = root["paths"]["apis/storage.k8s.io/v1"]["serverRelativeURL"]
    async with http.get(url) as response:
        document = await response.json()
    operation = document["paths"]["/apis/storage.k8s.io/v1/volumeattachments/{name}"]["patch"]
    assert operation["x-kubernetes-group-version-kind"]["kind"] == "VolumeAttachment"
    assert "fieldValidation" in [p["name"] for p in operation["parameters"]]
    async with http.get("/apis/storage.k8s.io/v1/nonsense") as response:
        assert response.status == 404 and (await response.json())["details"] == {}


async def test_bodies_and_paths_that_the_server_refuses(http: aiohttp.ClientSession) -> None:
    path = "/api/v1/namespaces/default/persistentvolumeclaims"
    async with http.post(path, data=b"{nope", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
    async with http.post(path, json={"metadata": {"name": "x"}}) as response:
        assert response.status == 422, "built-in kinds default kind and apiVersion from the path"
    snapshots = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots"
    async with http.post(snapshots, json={"metadata": {"name": "x"}}) as response:
        assert response.status == 400 and "Object 'Kind' is missing" in (await response.json())["message"]
    async with http.put(f"{path}/a", json=pvc("b")) as response:
        assert (
            response.status == 400
            and "does not match the name on the URL" in (await response.json())["message"]
        )
    patch = {"metadata": {"labels": {"a": "b"}}}
    async with http.patch(f"{path}/a", json=patch, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 415
    async with http.post(f"{path}/a", json=pvc("a")) as response:
        assert response.status == 405


async def test_delete_collection_and_dry_run(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    path = "/api/v1/namespaces/default/persistentvolumeclaims"
    async with http.post(f"{path}?dryRun=All", json=pvc("dry")) as response:
        assert response.status == 201
    assert (await apiserver.store.list("persistentvolumeclaims"))["items"] == []
    store = apiserver.store
    for name in ("a", "b"):
        await store.create("persistentvolumeclaims", pvc(name, group="g"), namespace="default")
    async with http.delete(f"{path}?labelSelector=group%3Dg") as response:
        listed = await response.json()
    assert response.status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
