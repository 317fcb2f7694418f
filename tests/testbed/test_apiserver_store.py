"""The store's write semantics, called directly as the control-plane stand-ins call it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from testbed.apiserver import (
    AlreadyExists,
    ApiError,
    Conflict,
    DeleteOptions,
    Forbidden,
    Invalid,
    NotFound,
    Store,
)

PVC, PV = "persistentvolumeclaims", "persistentvolumes"


def pvc(name: str, *, size: str = "1Gi", storage_class: str | None = "fast", **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, **meta},
        "spec": spec,
    }


def pv(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "csi": {"driver": "d", "volumeHandle": "h"},
    }
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": base | spec}


def storage_class(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "d",
    } | fields


def attachment(name: str, node: str = "node-1") -> dict[str, Any]:
    spec = {"attacher": "d", "nodeName": node, "source": {"persistentVolumeName": "pv-1"}}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": spec,
    }


async def status_code(call: Any) -> tuple[int, dict[str, Any]]:
    try:
        await call
    except ApiError as error:
        return error.code, error.status
    raise AssertionError("expected an API error")


@pytest.fixture
def store() -> Store:
    return Store(seed=7)


async def test_resource_versions_are_one_global_counter(store: Store) -> None:
    first = await store.create(PVC, pvc("a"), namespace="default")
    second = await store.create(PV, pv("b"))
    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    listed = await store.list(PVC)
    assert (
        listed["metadata"]["resourceVersion"]
        == second["metadata"]["resourceVersion"]
        == str(store.resource_version)
    )


async def test_create_fills_server_fields_and_defaults(store: Store) -> None:
    created = await store.create(PV, pv("pv-1"))
    meta = created["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"]) and meta["creationTimestamp"].endswith("Z")
    assert meta["finalizers"] == ["kubernetes.io/pv-protection"]
    assert created["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert created["spec"]["volumeMode"] == "Filesystem"
    assert created["status"]["phase"] == "Pending" and "lastPhaseTransitionTime" in created["status"]
    sc = await store.create("storageclasses", storage_class("sc"))
    assert (sc["reclaimPolicy"], sc["volumeBindingMode"]) == ("Delete", "Immediate")
    va = await store.create("volumeattachments", attachment("va") | {"status": {"attached": True}})
    assert va["status"] == {"attached": False}, "status cannot be set on create"


async def test_generate_name_appends_five_safe_characters(store: Store) -> None:
    created = await store.create(PVC, pvc("", generateName="gen-"), namespace="default")
    assert re.fullmatch(r"gen-[bcdfghjklmnpqrstvwxz2456789]{5}", created["metadata"]["name"])


async def test_generation_is_tracked_for_kinds_that_have_it(store: Store) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1},
    }
    created = await store.create("deployments", deployment, namespace="default")
    assert created["metadata"]["generation"] == 1
    labelled = await store.patch(
        "deployments", "d", {"metadata": {"labels": {"a": "b"}}}, namespace="default"
    )
    assert labelled["metadata"]["generation"] == 1
    scaled = await store.patch("deployments", "d", {"spec": {"replicas": 3}}, namespace="default")
    assert scaled["metadata"]["generation"] == 2
    claim = await store.create(PVC, pvc("c"), namespace="default")
    assert "generation" not in claim["metadata"]


async def test_admission_needs_an_active_namespace(store: Store) -> None:
    code, body = await status_code(store.create(PVC, pvc("x"), namespace="missing"))
    assert code == 404 and body["message"] == 'namespaces "missing" not found'
    await store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}})
    await store.create(PVC, pvc("held", finalizers=["example.com/hold"]), namespace="gone")
    await store.delete("namespaces", "gone")
    code, body = await status_code(store.create(PVC, pvc("late"), namespace="gone"))
    assert code == 403 and "because it is being terminated" in body["message"]
    with pytest.raises(Forbidden):
        await store.delete("namespaces", "default")


async def test_namespace_deletion_removes_its_content_then_itself(store: Store) -> None:
    await store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}})
    await store.create(
        "configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}, namespace="tmp"
    )
    await store.create(PVC, pvc("held"), namespace="tmp")
    terminating = await store.delete("namespaces", "tmp")
    assert terminating["status"]["phase"] == "Terminating"
    with pytest.raises(NotFound):
        await store.get("configmaps", "a", namespace="tmp")
    held = await store.get(PVC, "held", namespace="tmp")
    assert held["metadata"]["deletionTimestamp"], "pvc-protection keeps it until released"
    await store.patch(PVC, "held", {"metadata": {"finalizers": None}}, patch_type="merge", namespace="tmp")
    with pytest.raises(NotFound):
        await store.get("namespaces", "tmp")


async def test_storage_protection_admission_is_switchable() -> None:
    store = Store(storage_object_in_use_protection=False)
    assert "finalizers" not in (await store.create(PVC, pvc("a"), namespace="default"))["metadata"]
    assert "finalizers" not in (await store.create(PV, pv("b")))["metadata"]


async def test_default_storage_class_is_filled_in(store: Store) -> None:
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"}
    await store.create(
        "storageclasses",
        storage_class("standard") | {"metadata": {"name": "standard", "annotations": annotations}},
    )
    claim = await store.create(PVC, pvc("a", storage_class=None), namespace="default")
    assert claim["spec"]["storageClassName"] == "standard"
    explicit = await store.create(PVC, pvc("b", storage_class=""), namespace="default")
    assert explicit["spec"]["storageClassName"] == ""


async def test_create_existing_and_invalid_names(store: Store) -> None:
    await store.create(PVC, pvc("a"), namespace="default")
    with pytest.raises(AlreadyExists):
        await store.create(PVC, pvc("a"), namespace="default")
    code, body = await status_code(store.create(PVC, pvc("Bad_Name"), namespace="default"))
    assert code == 422 and body["details"]["causes"][0]["field"] == "metadata.name"
    assert "a lowercase RFC 1123 subdomain" in body["message"]
    code, body = await status_code(store.create(PVC, pvc(""), namespace="default"))
    assert body["details"]["causes"][0]["message"] == "Required value: name or generateName is required"


async def test_stale_update_conflicts_and_unconditional_update_wins(store: Store) -> None:
    created = await store.create(PVC, pvc("a"), namespace="default")
    await store.patch(PVC, "a", {"metadata": {"labels": {"x": "1"}}}, namespace="default")
    stale = created | {"metadata": created["metadata"] | {"annotations": {"c": "3"}}}
    code, body = await status_code(store.update(PVC, stale))
    assert code == 409 and body["reason"] == "Conflict"
    assert body["message"].endswith("please apply your changes to the latest version and try again")
    del stale["metadata"]["resourceVersion"]
    updated = await store.update(PVC, stale)
    assert updated["metadata"]["annotations"] == {"c": "3"} and "labels" not in updated["metadata"]


async def test_volume_attachment_updates_need_a_resource_version(store: Store) -> None:
    created = await store.create("volumeattachments", attachment("va"))
    del created["metadata"]["resourceVersion"]
    code, body = await status_code(store.update("volumeattachments", created))
    assert code == 422 and body["details"]["causes"][0]["field"] == "metadata.resourceVersion"


async def test_an_update_that_changes_nothing_writes_nothing(store: Store) -> None:
    created = await store.create(PVC, pvc("a"), namespace="default")
    before = store.resource_version
    same = await store.update(PVC, created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.resource_version == before


async def test_status_is_written_only_through_the_status_subresource(store: Store) -> None:
    created = await store.create(PVC, pvc("a"), namespace="default")
    created["status"] = {"phase": "Bound"}
    assert (await store.update(PVC, created))["status"] == {"phase": "Pending"}
    current = await store.get(PVC, "a", namespace="default")
    current["status"] = {"phase": "Bound", "capacity": {"storage": "1Gi"}}
    current["spec"]["volumeName"] = "sneaky"
    current["metadata"]["labels"] = {"via": "status"}
    updated = await store.update_status(PVC, current)
    assert updated["status"]["phase"] == "Bound" and "volumeName" not in updated["spec"]
    assert updated["metadata"]["labels"] == {"via": "status"}, "built-in kinds keep metadata changes"


async def test_volume_attachment_status_ignores_metadata(store: Store) -> None:
    await store.create("volumeattachments", attachment("va"))
    patch = {"metadata": {"annotations": {"a": "b"}}, "status": {"attached": True}}
    updated = await store.patch("volumeattachments", "va", patch, patch_type="merge", subresource="status")
    assert updated["status"]["attached"] is True and "annotations" not in updated["metadata"]
    code, body = await status_code(
        store.patch("volumeattachments", "va", {"spec": {"nodeName": "node-2"}}, patch_type="merge")
    )
    assert code == 422 and body["message"].endswith("field is immutable")


async def test_finalizers_hold_a_deleted_object_until_removed(store: Store) -> None:
    await store.create(PVC, pvc("a", finalizers=["example.com/a"]), namespace="default")
    marked = await store.delete(PVC, "a", namespace="default")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 0
    again = await store.delete(PVC, "a", namespace="default")
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    code, body = await status_code(
        store.patch(PVC, "a", {"metadata": {"finalizers": ["example.com/new"]}}, namespace="default")
    )
    assert code == 422 and 'found new finalizers []string{"example.com/new"}' in body["message"]
    removed = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a", "kubernetes.io/pvc-protection"]}
    }
    last = await store.patch(PVC, "a", removed, namespace="default")
    assert "finalizers" not in last["metadata"]
    with pytest.raises(NotFound):
        await store.get(PVC, "a", namespace="default")


async def test_delete_preconditions_and_answers(store: Store) -> None:
    created = await store.create(PV, pv("p"))
    with pytest.raises(Conflict, match="the UID in the precondition"):
        await store.delete(PV, "p", options=DeleteOptions(uid="nope"))
    with pytest.raises(Conflict, match="the ResourceVersion in the precondition"):
        await store.delete(PV, "p", options=DeleteOptions(resource_version="1"))
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {}}
    await store.create("leases", lease, namespace="default")
    status = await store.delete("leases", "l", namespace="default")
    assert status["status"] == "Success" and status["details"]["group"] == "coordination.k8s.io"
    store_off = Store(storage_object_in_use_protection=False)
    await store_off.create(PV, pv("q"))
    gone = await store_off.delete(PV, "q")
    assert gone["kind"] == "PersistentVolume" and "deletionTimestamp" not in gone["metadata"]
    assert created["metadata"]["uid"]


async def test_scheduled_pods_are_deleted_gracefully(store: Store) -> None:
    container = {"name": "c", "image": "busybox"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"nodeName": "n", "containers": [container]},
    }
    created = await store.create("pods", pod, namespace="default")
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert created["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    terminating = await store.delete("pods", "p", namespace="default")
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
    await store.delete("pods", "p", namespace="default", options=DeleteOptions(grace_period_seconds=0))
    with pytest.raises(NotFound):
        await store.get("pods", "p", namespace="default")


async def test_pvc_resize_rules(store: Store) -> None:
    await store.create("storageclasses", storage_class("fast", allowVolumeExpansion=True))
    await store.create("storageclasses", storage_class("fixed"))
    await store.create(PVC, pvc("a"), namespace="default")
    await store.create(PVC, pvc("b", storage_class="fixed"), namespace="default")
    grow = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    code, body = await status_code(store.patch(PVC, "a", grow, patch_type="merge", namespace="default"))
    assert code == 422 and "spec is immutable after creation" in body["message"], "unbound claims cannot grow"
    bound = {"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    for name in ("a", "b"):
        await store.patch(PVC, name, bound, patch_type="merge", namespace="default", subresource="status")
    grown = await store.patch(PVC, "a", grow, patch_type="merge", namespace="default")
    assert grown["spec"]["resources"]["requests"]["storage"] == "2Gi"
    code, body = await status_code(store.patch(PVC, "b", grow, patch_type="merge", namespace="default"))
    assert code == 403 and "the storageclass that provisions the pvc must support resize" in body["message"]
    shrink = {"spec": {"resources": {"requests": {"storage": "1024Mi"}}}}
    code, body = await status_code(store.patch(PVC, "a", shrink, patch_type="merge", namespace="default"))
    assert code == 422 and body["details"]["causes"][-1]["message"].endswith(
        "can not be less than status.capacity"
    )
    partial = {"spec": {"resources": {"requests": {"storage": "1536Mi"}}}}
    assert (await store.patch(PVC, "a", partial, patch_type="merge", namespace="default"))["metadata"]


async def test_persistent_volume_validation(store: Store) -> None:
    no_source = pv("x")
    del no_source["spec"]["csi"]
    code, body = await status_code(store.create(PV, no_source))
    assert (
        code == 422
        and body["message"]
        == 'PersistentVolume "x" is invalid: spec: Required value: must specify a volume type'
    )
    code, body = await status_code(store.create(PV, pv("y", csi={"driver": "", "volumeHandle": "h"})))
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.csi.driver"]
    await store.create(PV, pv("z"))
    code, body = await status_code(
        store.patch(PV, "z", {"spec": {"csi": {"volumeHandle": "other"}}}, patch_type="merge")
    )
    assert code == 422 and body["details"]["causes"][0]["field"] == "spec.persistentvolumesource"
    resized = await store.patch(PV, "z", {"spec": {"capacity": {"storage": "2Gi"}}}, patch_type="merge")
    assert resized["spec"]["capacity"] == {"storage": "2Gi"}


async def test_lease_and_event_validation(store: Store) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}}
    code, body = await status_code(
        store.create("leases", lease | {"spec": {"leaseDurationSeconds": 0}}, namespace="default")
    )
    assert (
        code == 422 and body["details"]["causes"][0]["message"] == "Invalid value: 0: must be greater than 0"
    )
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e"},
        "involvedObject": {"kind": "PersistentVolume", "name": "pv-1"},
        "reason": "R",
    }
    code, body = await status_code(store.create("events", event, namespace="golden-less"))
    assert code == 404, "the namespace must exist first"
    await store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
    code, body = await status_code(store.create("events", event, namespace="apps"))
    assert code == 422 and body["details"]["causes"][0]["field"] == "involvedObject.namespace"
    created = await store.create("events", event, namespace="default")
    assert created["eventTime"] is None and created["reportingComponent"] == ""
    new_style = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "e2"},
        "type": "Normal",
    }
    code, body = await status_code(store.create("events.events.k8s.io", new_style, namespace="default"))
    assert {c["field"] for c in body["details"]["causes"]} >= {"eventTime", "reportingController", "action"}


async def test_times_are_rendered_as_the_server_renders_them(store: Store) -> None:
    spec = {
        "holderIdentity": "a",
        "acquireTime": "2024-01-01T00:00:00+00:00",
        "renewTime": "2024-01-01T00:00:01.5Z",
    }
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": spec}
    created = await store.create("leases", lease, namespace="default")
    assert created["spec"]["acquireTime"] == "2024-01-01T00:00:00.000000Z"
    assert created["spec"]["renewTime"] == "2024-01-01T00:00:01.500000Z"


async def test_dry_run_writes_nothing(store: Store) -> None:
    before = store.resource_version
    created = await store.create(PVC, pvc("a"), namespace="default", dry_run=True)
    assert created["metadata"]["name"] == "a" and store.resource_version == before
    with pytest.raises(NotFound):
        await store.get(PVC, "a", namespace="default")


async def test_invalid_aggregates_and_details(store: Store) -> None:
    bad = pv("pv-bad")
    del bad["spec"]["capacity"]
    with pytest.raises(Invalid) as caught:
        await store.create(PV, bad)
    assert caught.value.status["message"] == (
        'PersistentVolume "pv-bad" is invalid: [spec.capacity: Required value, '
        'spec.capacity: Unsupported value: null: supported values: "storage"]'
    )


async def test_pvc_conditions_carry_null_times_like_go_serialization() -> None:
    """kube-apiserver writes a zero metav1.Time as null: `lastProbeTime: null` (golden 06)."""
    store = Store()
    pvc = {
        "metadata": {"name": "c", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    await store.create("persistentvolumeclaims", pvc, namespace="default")
    patched = await store.patch(
        "persistentvolumeclaims",
        "c",
        {"status": {"conditions": [{"type": "Resizing", "status": "True"}]}},
        patch_type="merge",
        namespace="default",
        subresource="status",
    )
    assert patched["status"]["conditions"] == [
        {"type": "Resizing", "status": "True", "lastProbeTime": None, "lastTransitionTime": None}
    ]
