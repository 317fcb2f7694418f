"""Fakes for csi-attacher's unit tests (an API server of dicts, a CSI controller stub), and their own tests.

`FakeKube` answers `get` and `patch` like kube-apiserver for what the attacher sends: JSON merge
patches (also on the `status` subresource, which changes only `status`), JSON patches with `test`
operations as evanphx/json-patch v4 applies them (a `test` of `null` passes on a missing key), a
resourceVersion bumped on every write, and an object that is being deleted and loses its last
finalizer removed. `FakeCSI` is the `controller` stub: it records requests and answers from a queue
of results (a response or a gRPC error).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from kit import FakeRpcError

from common.csi import CSIConnection
from common.kube.client import ApiError, KubeClient
from common.kube.informer import InformerFactory
from common.kube.resources import CSI_NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS, Resource
from proto import csi_pb2
from testbed.apiserver.patch import PatchError, json_patch, merge_patch

DRIVER = "hostpath.csi.k8s.io"
FINALIZER = "external-attacher/hostpath-csi-k8s-io"
PV_NAME = "pvc-85bea930-1778-4a6f-b67e-4d20ad56dee6"


@dataclass
class Request:
    verb: str
    resource: str
    name: str
    body: Any = None
    patch_type: str = ""
    subresource: str = ""


def _missing(doc: Any, path: str) -> bool:
    node = doc
    for token in path.lstrip("/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            return True
        node = node[token]
    return False


def evanphx_json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 as kube-apiserver applies it: a `test` of null on a missing path passes."""
    kept = [
        op for op in ops if not (op["op"] == "test" and op.get("value") is None and _missing(doc, op["path"]))
    ]
    return json_patch(doc, kept)


@dataclass
class FakeKube:
    """Objects by (plural, namespace, name); see the module docstring."""

    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    failures: dict[tuple[str, str], list[ApiError]] = field(default_factory=dict)
    """(verb, plural) → errors answered to the next such requests, one each."""
    rv: int = 100

    def put(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        key = (resource.plural, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        return copy.deepcopy(obj)

    def current(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = self.objects.get((resource.plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def fail(self, verb: str, resource: Resource, error: ApiError) -> None:
        self.failures.setdefault((verb, resource.plural), []).append(error)

    def _failure(self, verb: str, resource: Resource) -> None:
        queued = self.failures.get((verb, resource.plural))
        if queued:
            raise queued.pop(0)

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        self.requests.append(Request("get", resource.plural, name))
        self._failure("get", resource)
        obj = self.current(resource, name, namespace)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return obj

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str = "",
    ) -> dict[str, Any]:
        self.requests.append(
            Request("patch", resource.plural, name, copy.deepcopy(patch), patch_type, subresource)
        )
        self._failure("patch", resource)
        obj = self.current(resource, name, namespace)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        if patch_type == "json":
            try:
                new = evanphx_json_patch(obj, patch)
            except PatchError as err:
                raise ApiError(422, "Invalid", str(err)) from None
        else:
            assert patch_type == "merge"
            new = merge_patch(obj, patch)
        if subresource == "status":
            new = {**obj, "status": new.get("status", {})}
        else:
            new["status"] = obj.get("status", {})
        return self.put(resource, new)

    def client(self) -> KubeClient:
        return cast(KubeClient, self)

    def writes(self, resource: Resource | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.verb != "get" and (resource is None or r.resource == resource.plural)
        ]


@dataclass
class FakeCSI:
    """The ControllerStub part the attacher calls, plus `controller` so it stands in for CSIConnection."""

    publish_results: list[Any] = field(default_factory=list)
    unpublish_results: list[Any] = field(default_factory=list)
    list_pages: list[Any] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    callbacks: list[Any] = field(default_factory=list)

    @property
    def controller(self) -> FakeCSI:
        return self

    def on_reconnect(self, callback: Any) -> None:
        self.callbacks.append(callback)

    @staticmethod
    def _answer(results: list[Any], default: Any) -> Any:
        result = results.pop(0) if results else default
        if isinstance(result, BaseException):
            raise result
        return result

    async def ControllerPublishVolume(self, request: Any, *, timeout: float) -> Any:
        self.calls.append(("ControllerPublishVolume", request))
        return self._answer(
            self.publish_results,
            csi_pb2.ControllerPublishVolumeResponse(publish_context={"device": "/dev/x"}),
        )

    async def ControllerUnpublishVolume(self, request: Any, *, timeout: float) -> Any:
        self.calls.append(("ControllerUnpublishVolume", request))
        return self._answer(self.unpublish_results, csi_pb2.ControllerUnpublishVolumeResponse())

    async def ListVolumes(self, request: Any, *, timeout: float) -> Any:
        self.calls.append(("ListVolumes", request))
        return self._answer(self.list_pages, csi_pb2.ListVolumesResponse())

    def connection(self) -> CSIConnection:
        return cast(CSIConnection, self)

    def methods(self) -> list[str]:
        return [name for name, _ in self.calls]


def va(
    name: str = "golden-va", *, node: str = "node-1", pv: str | None = PV_NAME, **status: Any
) -> dict[str, Any]:
    """A VolumeAttachment as the attach/detach controller creates it."""
    source: dict[str, Any] = {"persistentVolumeName": pv} if pv else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": source},
        "status": {"attached": False, **status},
    }


def pv(name: str = PV_NAME, *, finalizers: list[str] | None = None, **csi: Any) -> dict[str, Any]:
    """The golden PV (04) before the attacher touched it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "finalizers": finalizers
            if finalizers is not None
            else ["external-provisioner.volume.kubernetes.io/finalizer", "kubernetes.io/pv-protection"],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "csi": {
                "driver": DRIVER,
                "fsType": "xfs",
                "volumeAttributes": {"tier": "gold"},
                "volumeHandle": "vol-1",
                **csi,
            },
            "mountOptions": ["noatime"],
            "persistentVolumeReclaimPolicy": "Delete",
            "volumeMode": "Filesystem",
        },
        "status": {"phase": "Bound"},
    }


def csinode(node: str = "node-1", node_id: str = "node-1", driver: str = DRIVER) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSINode",
        "metadata": {"name": node},
        "spec": {"drivers": [{"name": driver, "nodeID": node_id, "topologyKeys": []}]},
    }


@dataclass
class Cluster:
    """A FakeKube plus an informer factory whose caches the test fills (`add`) or refreshes (`sync`)."""

    kube: FakeKube = field(default_factory=FakeKube)

    def __post_init__(self) -> None:
        self.factory = InformerFactory(self.kube.client())

    def add(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        stored = self.kube.put(resource, obj)
        self.factory.informer(resource).store.put(stored)
        return stored

    def sync(self) -> None:
        """Make every cache show what the fake API server holds (deleted objects included)."""
        for resource in (VOLUME_ATTACHMENTS, PERSISTENT_VOLUMES, CSI_NODES):
            store = self.factory.informer(resource).store
            for key in store.list_keys():
                store.remove(key)
            for (plural, _, _), obj in self.kube.objects.items():
                if plural == resource.plural:
                    store.put(copy.deepcopy(obj))

    def va(self, name: str = "golden-va") -> dict[str, Any] | None:
        return self.kube.current(VOLUME_ATTACHMENTS, name)

    def pv(self, name: str = PV_NAME) -> dict[str, Any] | None:
        return self.kube.current(PERSISTENT_VOLUMES, name)


# The fakes' own tests: the attacher's tests rely on these behaviours.


async def test_fake_json_patch_tests_null_like_the_api_server() -> None:
    kube = FakeKube()
    kube.put(VOLUME_ATTACHMENTS, va())
    ops = [
        {"op": "test", "path": "/metadata/finalizers", "value": None},
        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
    ]
    patched = await kube.patch(VOLUME_ATTACHMENTS, "golden-va", ops, patch_type="json")
    assert patched["metadata"]["finalizers"] == [FINALIZER]
    with pytest.raises(ApiError) as failed:  # now the list exists: the same test fails
        await kube.patch(VOLUME_ATTACHMENTS, "golden-va", ops, patch_type="json")
    assert failed.value.invalid


async def test_fake_status_subresource_changes_only_status_and_deletion_completes() -> None:
    kube = FakeKube()
    obj = va()
    obj["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[FINALIZER])
    kube.put(VOLUME_ATTACHMENTS, obj)
    patched = await kube.patch(
        VOLUME_ATTACHMENTS,
        "golden-va",
        {"metadata": {"finalizers": None}, "status": {"attached": True}},
        subresource="status",
    )
    assert patched["metadata"]["finalizers"] == [FINALIZER] and patched["status"]["attached"] is True
    await kube.patch(
        VOLUME_ATTACHMENTS,
        "golden-va",
        [{"op": "remove", "path": "/metadata/finalizers/0"}],
        patch_type="json",
    )
    assert kube.current(VOLUME_ATTACHMENTS, "golden-va") is None


async def test_fake_csi_answers_in_order() -> None:
    csi = FakeCSI(publish_results=[FakeRpcError(grpc.StatusCode.INTERNAL, "boom")])
    with pytest.raises(grpc.RpcError):
        await csi.ControllerPublishVolume(None, timeout=1)
    response = await csi.ControllerPublishVolume(None, timeout=1)
    assert dict(response.publish_context) == {"device": "/dev/x"}
    assert csi.methods() == ["ControllerPublishVolume"] * 2
