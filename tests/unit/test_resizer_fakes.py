"""Fakes for csi-resizer's unit tests (an API server of dicts, a recorder, gRPC errors), and their own tests.

`FakeKube` answers `get` and `patch` like kube-apiserver for what the resizer sends: strategic merge
patches applied with the test bed's implementation, resourceVersion bumped on every write, and a
`metadata.resourceVersion` in the patch checked as a precondition (409 Conflict).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from kit import FakeRpcError

from common.kube.client import ApiError, KubeClient
from common.kube.informer import InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, Resource
from testbed.apiserver.strategic import strategic_merge_patch

DRIVER = "hostpath.csi.k8s.io"


@dataclass
class Patch:
    resource: str
    name: str
    body: dict[str, Any]
    subresource: str


@dataclass
class FakeKube:
    """Objects by (plural, namespace, name); see the module docstring."""

    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    patches: list[Patch] = field(default_factory=list)
    failures: list[ApiError] = field(default_factory=list)
    """Errors for the next patches, one each."""
    rv: int = 100

    def put(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        self.objects[(resource.plural, meta.get("namespace"), meta["name"])] = obj
        return copy.deepcopy(obj)

    def current(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(resource.plural, namespace, name)])

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        try:
            return self.current(resource, name, namespace)
        except KeyError:
            message = f'{resource.plural} "{name}" not found'
            raise ApiError(404, "NotFound", message) from None

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
        assert patch_type == "strategic"
        self.patches.append(Patch(resource.plural, name, copy.deepcopy(patch), subresource))
        if self.failures:
            raise self.failures.pop(0)
        obj = await self.get(resource, name, namespace=namespace)
        body = copy.deepcopy(patch)
        wanted = (body.get("metadata") or {}).pop("resourceVersion", None)
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        return self.put(resource, strategic_merge_patch(obj, body, resource.kind))

    def client(self) -> KubeClient:
        return cast(KubeClient, self)


@dataclass
class FakeRecorder:
    """EventRecorder's `event`, remembered."""

    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(type, reason, message, involved object's resourceVersion)."""

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        self.events.append((event_type, reason, message, rv))

    @property
    def reasons(self) -> list[str]:
        return [reason for _, reason, _, _ in self.events]


def claim(
    request: str = "1Gi", *, capacity: str = "1Gi", volume: str = "pv-1", **status: Any
) -> dict[str, Any]:
    """A bound PVC `default/data` as the golden files show it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default", "uid": "uid-1"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": request}},
            "storageClassName": "golden",
            "volumeMode": "Filesystem",
            "volumeName": volume,
        },
        "status": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": capacity},
            "phase": "Bound",
            **status,
        },
    }


def volume(capacity: str = "1Gi", *, name: str = "pv-1", driver: str = DRIVER, **csi: Any) -> dict[str, Any]:
    """Its PV."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": capacity},
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": "default",
                "name": "data",
                "uid": "uid-1",
            },
            "csi": {"driver": driver, "volumeHandle": "vol-1", "fsType": "xfs", **csi},
            "volumeMode": "Filesystem",
        },
        "status": {"phase": "Bound"},
    }


@dataclass
class Cluster:
    """A FakeKube with an informer factory whose caches the test fills."""

    kube: FakeKube = field(default_factory=FakeKube)
    recorder: FakeRecorder = field(default_factory=FakeRecorder)

    def __post_init__(self) -> None:
        self.factory = InformerFactory(self.kube.client())

    def add(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        stored = self.kube.put(resource, obj)
        self.factory.informer(resource).store.put(stored)
        return stored

    def edit_claim(self, **spec: Any) -> dict[str, Any]:
        """The user edits the claim's spec (e.g. `resources=...`); the cache sees it at once."""
        pvc = self.kube.current(PERSISTENT_VOLUME_CLAIMS, "data", "default")
        pvc["spec"].update(spec)
        return self.add(PERSISTENT_VOLUME_CLAIMS, pvc)

    def set_request(self, size: str) -> dict[str, Any]:
        return self.edit_claim(resources={"requests": {"storage": size}})

    def pvc(self) -> dict[str, Any]:
        return self.kube.current(PERSISTENT_VOLUME_CLAIMS, "data", "default")

    def pv(self, name: str = "pv-1") -> dict[str, Any]:
        return self.kube.current(PERSISTENT_VOLUMES, name)


# The fakes' own tests: the resizer's tests rely on these behaviours.


async def test_fake_kube_patches_with_resource_version_precondition() -> None:
    kube = FakeKube()
    stored = kube.put(PERSISTENT_VOLUME_CLAIMS, claim())
    rv = stored["metadata"]["resourceVersion"]
    body = {"metadata": {"resourceVersion": rv}, "status": {"allocatedResources": {"storage": "2Gi"}}}
    updated = await kube.patch(
        PERSISTENT_VOLUME_CLAIMS,
        "data",
        body,
        namespace="default",
        patch_type="strategic",
        subresource="status",
    )
    assert updated["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert updated["metadata"]["resourceVersion"] != rv
    with pytest.raises(ApiError) as stale:
        await kube.patch(PERSISTENT_VOLUME_CLAIMS, "data", body, namespace="default", patch_type="strategic")
    assert stale.value.conflict


async def test_fake_kube_get_missing_is_not_found() -> None:
    with pytest.raises(ApiError) as missing:
        await FakeKube().get(PERSISTENT_VOLUMES, "nope")
    assert missing.value.not_found


def test_fake_rpc_error_is_classified_like_a_grpc_error() -> None:
    from common.csi.errors import describe, is_final

    error = FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "too big")
    assert is_final(error)
    assert describe(error) == "rpc error: code = OutOfRange desc = too big"
