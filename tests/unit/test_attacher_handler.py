"""One sync of a VolumeAttachment or PV: the API writes and CSI calls the attacher makes, in order."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, cast

import grpc
import pytest
from test_attacher_fakes import (
    DRIVER,
    FINALIZER,
    PV_NAME,
    Cluster,
    FakeCSI,
    FakeRpcError,
    csinode,
    pv,
    va,
)

from common.csi import CSIConnection
from common.errors import CSIError
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, SECRETS, VOLUME_ATTACHMENTS
from proto import csi_pb2
from sidecars.attacher.csi_handler import CSIHandler
from sidecars.attacher.handler import (
    PV_INDEX,
    Capabilities,
    Listers,
    Settings,
    SyncError,
    TrivialHandler,
    discover,
    pv_index,
)
from sidecars.attacher.request import NODE_ID_ANNOTATION, NODE_IDS_ANNOTATION

Code = grpc.StatusCode
DELETED = "2026-11-22T23:55:00Z"


def handler(
    cluster: Cluster, csi: FakeCSI, *, caps: Capabilities | None = None, error_codes: bool = True
) -> CSIHandler:
    vas = cluster.factory.informer(VOLUME_ATTACHMENTS)
    if PV_INDEX not in vas.store._index_funcs:
        vas.add_index(PV_INDEX, pv_index)
    return CSIHandler(
        driver=DRIVER,
        kube=cluster.kube.client(),
        csi=csi.connection(),
        listers=Listers(
            vas=vas,
            pvs=cluster.factory.informer(PERSISTENT_VOLUMES),
            csinodes=cluster.factory.informer(CSI_NODES),
        ),
        capabilities=caps or Capabilities(),
        settings=Settings(timeout=15.0, default_fstype="ext4", error_codes=error_codes),
    )


def golden_cluster(**va_status: Any) -> Cluster:
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(CSI_NODES, csinode())
    cluster.add(VOLUME_ATTACHMENTS, va(**va_status))
    return cluster


def deleting(obj: dict[str, Any], *, node_id: str = "node-1") -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    obj["metadata"].update(
        deletionTimestamp=DELETED, finalizers=[FINALIZER], annotations={NODE_ID_ANNOTATION: node_id}
    )
    obj["status"] = {"attached": True, "attachmentMetadata": {"device": "/dev/x"}}
    return obj


async def sync(cluster: Cluster, h: CSIHandler, name: str = "golden-va") -> None:
    obj = cluster.factory.informer(VOLUME_ATTACHMENTS).get(name)
    assert obj is not None
    await h.sync_va(obj)


async def test_attach_adds_both_finalizers_before_publishing_and_then_marks_attached() -> None:
    cluster, csi = golden_cluster(), FakeCSI()
    await sync(cluster, handler(cluster, csi))

    writes = [(w.resource, w.patch_type, w.subresource) for w in cluster.kube.writes()]
    assert writes == [
        ("persistentvolumes", "json", ""),
        ("volumeattachments", "json", ""),
        ("volumeattachments", "merge", "status"),
    ]
    assert cluster.kube.writes()[0].body[0]["op"] == "test"  # the PV finalizer is guarded
    assert csi.methods() == ["ControllerPublishVolume"]
    request = csi.calls[0][1]
    assert request.volume_id == "vol-1" and request.node_id == "node-1"
    assert request.readonly is False and dict(request.volume_context) == {"tier": "gold"}
    assert request.volume_capability.mount.fs_type == "xfs"
    assert list(request.volume_capability.mount.mount_flags) == ["noatime"]
    assert (
        request.volume_capability.access_mode.mode == csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    )
    attached = cluster.va()
    assert attached is not None
    assert attached["metadata"]["finalizers"] == [FINALIZER]
    assert attached["metadata"]["annotations"] == {NODE_ID_ANNOTATION: "node-1"}
    assert attached["status"] == {"attached": True, "attachmentMetadata": {"device": "/dev/x"}}
    stored_pv = cluster.pv()
    assert stored_pv is not None and stored_pv["metadata"]["finalizers"][-1] == FINALIZER


async def test_an_attached_va_is_left_alone_unless_forced() -> None:
    cluster, csi = golden_cluster(attached=True), FakeCSI()
    h = handler(cluster, csi)
    await sync(cluster, h)
    assert csi.calls == [] and cluster.kube.writes() == []
    h.force_sync("golden-va", published=True)
    await sync(cluster, h)
    assert csi.methods() == ["ControllerPublishVolume"]


async def test_capabilities_shape_the_request() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(PERSISTENT_VOLUMES, pv(readOnly=True, fsType=""))
    cluster.add(CSI_NODES, csinode(node_id="csi-node-7"))
    cluster.add(VOLUME_ATTACHMENTS, va())
    caps = Capabilities(publish_readonly=True, single_node_multi_writer=True)
    await sync(cluster, handler(cluster, csi, caps=caps))
    request = csi.calls[0][1]
    assert request.readonly is True and request.node_id == "csi-node-7"
    assert request.volume_capability.mount.fs_type == "ext4"  # --default-fstype
    assert (
        request.volume_capability.access_mode.mode
        == csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
    )


async def test_missing_csinode_is_golden_05_and_nothing_is_published() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(VOLUME_ATTACHMENTS, va("golden-va-bad", node="node-missing"))
    with pytest.raises(SyncError, match="failed to attach"):
        await sync(cluster, handler(cluster, csi), "golden-va-bad")
    stored = cluster.va("golden-va-bad")
    assert stored is not None
    error = stored["status"]["attachError"]
    assert error["message"] == 'csinode.storage.k8s.io "node-missing" not found'
    assert "errorCode" not in error  # not a gRPC error
    assert "finalizers" not in stored["metadata"] and "annotations" not in stored["metadata"]
    assert csi.calls == []


async def test_the_legacy_node_annotation_stands_in_for_a_missing_csinode() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(VOLUME_ATTACHMENTS, va())
    annotations = {NODE_IDS_ANNOTATION: json.dumps({DRIVER: "legacy-id"})}
    cluster.kube.put(NODES, {"metadata": {"name": "node-1", "annotations": annotations}})
    await sync(cluster, handler(cluster, csi))
    assert csi.calls[0][1].node_id == "legacy-id"
    stored = cluster.va()
    assert stored is not None and stored["metadata"]["annotations"][NODE_ID_ANNOTATION] == "legacy-id"


@pytest.mark.parametrize(("error_codes", "expected"), [(True, 9), (False, None)])
async def test_a_driver_error_is_recorded_with_its_grpc_code(error_codes: bool, expected: int | None) -> None:
    cluster = golden_cluster()
    csi = FakeCSI(publish_results=[FakeRpcError(Code.FAILED_PRECONDITION, "published elsewhere")])
    with pytest.raises(SyncError, match="published elsewhere"):
        await sync(cluster, handler(cluster, csi, error_codes=error_codes))
    stored = cluster.va()
    assert stored is not None
    error = stored["status"]["attachError"]
    assert error["message"] == "rpc error: code = FailedPrecondition desc = published elsewhere"
    assert error.get("errorCode") == expected
    assert stored["status"]["attached"] is False
    assert stored["metadata"]["finalizers"] == [FINALIZER]  # added before the call, as upstream


async def test_recovery_after_an_error_clears_attach_error() -> None:
    cluster = golden_cluster()
    csi = FakeCSI(publish_results=[FakeRpcError(Code.UNAVAILABLE, "down")])
    h = handler(cluster, csi)
    with pytest.raises(SyncError):
        await sync(cluster, h)
    cluster.sync()
    await sync(cluster, h)
    stored = cluster.va()
    assert (
        stored is not None and "attachError" not in stored["status"] and stored["status"]["attached"] is True
    )


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-pv", f'persistentvolume "{PV_NAME}" not found'),
        ("pv-deleting", f'PersistentVolume "{PV_NAME}" is marked for deletion'),
        ("secret", 'failed to load secret "default/publish-secret": secrets "publish-secret" not found'),
    ],
)
async def test_bad_input_becomes_an_attach_error(setup: str, message: str) -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(CSI_NODES, csinode())
    if setup == "pv-deleting":
        volume = pv()
        volume["metadata"]["deletionTimestamp"] = DELETED
        cluster.add(PERSISTENT_VOLUMES, volume)
    elif setup == "secret":
        cluster.add(
            PERSISTENT_VOLUMES,
            pv(controllerPublishSecretRef={"name": "publish-secret", "namespace": "default"}),
        )
    cluster.add(VOLUME_ATTACHMENTS, va())
    with pytest.raises(SyncError):
        await sync(cluster, handler(cluster, csi))
    stored = cluster.va()
    assert stored is not None and stored["status"]["attachError"]["message"] == message
    assert csi.calls == []


async def test_secrets_reach_the_driver() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(CSI_NODES, csinode())
    cluster.add(PERSISTENT_VOLUMES, pv(controllerPublishSecretRef={"name": "s", "namespace": "default"}))
    cluster.kube.put(
        SECRETS,
        {"metadata": {"name": "s", "namespace": "default"}, "data": {"k": base64.b64encode(b"v").decode()}},
    )
    cluster.add(VOLUME_ATTACHMENTS, va())
    await sync(cluster, handler(cluster, csi))
    assert dict(csi.calls[0][1].secrets) == {"k": "v"}


async def test_forced_reattach_that_fails_marks_the_va_detached() -> None:
    """external-attacher#215: the driver lost it and the node is gone: stop saying attached."""
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(VOLUME_ATTACHMENTS, va(attached=True, attachmentMetadata={"device": "/dev/x"}))
    h = handler(cluster, csi)
    h.force_sync("golden-va", published=False)
    with pytest.raises(SyncError):
        await sync(cluster, h)
    stored = cluster.va()
    assert stored is not None
    assert stored["status"]["attached"] is False and "attachmentMetadata" not in stored["status"]
    assert stored["status"]["attachError"]["message"] == 'csinode.storage.k8s.io "node-1" not found'


async def test_detach_uses_the_recorded_node_id_when_node_and_csinode_are_gone() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(VOLUME_ATTACHMENTS, deleting(va(), node_id="recorded-id"))
    await sync(cluster, handler(cluster, csi))
    assert csi.methods() == ["ControllerUnpublishVolume"]
    assert csi.calls[0][1].node_id == "recorded-id" and csi.calls[0][1].volume_id == "vol-1"
    assert cluster.va() is None  # finalizer off: the API server finished the deletion
    assert [w.subresource for w in cluster.kube.writes(VOLUME_ATTACHMENTS)] == [
        ""
    ]  # no status patch to a gone VA


async def test_detach_prefers_the_csinode() -> None:
    cluster, csi = golden_cluster(), FakeCSI()
    cluster.add(VOLUME_ATTACHMENTS, deleting(va(), node_id="stale-id"))
    await sync(cluster, handler(cluster, csi))
    assert csi.calls[0][1].node_id == "node-1"


async def test_unpublish_not_found_counts_as_detached() -> None:
    cluster = golden_cluster()
    cluster.add(VOLUME_ATTACHMENTS, deleting(va()))
    csi = FakeCSI(unpublish_results=[FakeRpcError(Code.NOT_FOUND, "node node-1 not found")])
    await sync(cluster, handler(cluster, csi))
    assert cluster.va() is None


async def test_a_failed_detach_keeps_the_finalizer_and_records_detach_error() -> None:
    cluster = golden_cluster()
    cluster.add(VOLUME_ATTACHMENTS, deleting(va()))
    csi = FakeCSI(unpublish_results=[FakeRpcError(Code.INTERNAL, "busy")])
    with pytest.raises(SyncError, match="failed to detach"):
        await sync(cluster, handler(cluster, csi))
    stored = cluster.va()
    assert stored is not None and stored["metadata"]["finalizers"] == [FINALIZER]
    assert stored["status"]["detachError"]["message"] == "rpc error: code = Internal desc = busy"
    assert "errorCode" not in stored["status"]["detachError"]


async def test_a_va_whose_pv_is_gone_is_released_without_a_driver_call() -> None:
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(VOLUME_ATTACHMENTS, deleting(va()))
    await sync(cluster, handler(cluster, csi))
    assert csi.calls == [] and cluster.va() is None


async def test_a_detached_va_without_our_finalizer_is_done() -> None:
    cluster, csi = golden_cluster(), FakeCSI()
    obj = deleting(va())
    obj["metadata"]["finalizers"] = ["someone/else"]
    cluster.add(VOLUME_ATTACHMENTS, obj)
    await sync(cluster, handler(cluster, csi))
    assert csi.calls == [] and cluster.kube.writes() == []


async def test_pv_finalizer_goes_only_when_the_pv_is_deleted_and_unused() -> None:
    cluster, csi = Cluster(), FakeCSI()
    volume = pv(finalizers=["kubernetes.io/pv-protection", FINALIZER])
    volume["metadata"]["deletionTimestamp"] = DELETED
    stored = cluster.add(PERSISTENT_VOLUMES, volume)
    cluster.add(VOLUME_ATTACHMENTS, va(name="other-driver-va"))
    h = handler(cluster, csi)
    await h.sync_pv(stored)
    assert cluster.kube.writes() == []  # still referenced (by any attacher's VA)
    cluster.factory.informer(VOLUME_ATTACHMENTS).store.remove("other-driver-va")
    await h.sync_pv(stored)
    [write] = cluster.kube.writes()
    assert write.body == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]
    after = cluster.pv()
    assert after is not None and after["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]


async def test_a_live_pv_keeps_its_finalizer() -> None:
    cluster, csi = Cluster(), FakeCSI()
    stored = cluster.add(PERSISTENT_VOLUMES, pv(finalizers=[FINALIZER]))
    await handler(cluster, csi).sync_pv(stored)
    assert cluster.kube.writes() == []


async def test_trivial_handler_only_marks_attached() -> None:
    cluster = Cluster()
    stored = cluster.add(VOLUME_ATTACHMENTS, va())
    trivial = TrivialHandler(kube=cluster.kube.client())
    await trivial.sync_va(stored)
    after = cluster.va()
    assert after is not None and after["status"] == {"attached": True}
    assert "finalizers" not in after["metadata"]
    await trivial.sync_va(after)
    assert len(cluster.kube.writes()) == 1


class FakeDiscovery:
    def __init__(self, plugin: set[str], controller: set[str], *, slow: bool = False) -> None:
        self.plugin, self.controller, self.slow = frozenset(plugin), frozenset(controller), slow

    async def plugin_capabilities(self) -> frozenset[str]:
        return self.plugin

    async def controller_capabilities(self) -> frozenset[str]:
        if self.slow:
            await asyncio.Event().wait()  # a driver that never answers
        return self.controller


async def test_discovery_chooses_the_handler() -> None:
    def conn(plugin: set[str], controller: set[str]) -> CSIConnection:
        return cast(CSIConnection, FakeDiscovery(plugin, controller))

    assert await discover(conn(set(), {"PUBLISH_UNPUBLISH_VOLUME"})) is None
    assert await discover(conn({"CONTROLLER_SERVICE"}, {"CREATE_DELETE_VOLUME"})) is None
    caps = await discover(
        conn(
            {"CONTROLLER_SERVICE"},
            {"PUBLISH_UNPUBLISH_VOLUME", "PUBLISH_READONLY", "LIST_VOLUMES", "LIST_VOLUMES_PUBLISHED_NODES"},
        )
    )
    assert caps == Capabilities(
        publish_readonly=True, single_node_multi_writer=False, list_published_nodes=True
    )
    only_list = await discover(conn({"CONTROLLER_SERVICE"}, {"PUBLISH_UNPUBLISH_VOLUME", "LIST_VOLUMES"}))
    assert only_list is not None and not only_list.list_published_nodes


@pytest.mark.looptime
async def test_discovery_gives_up_after_one_second(looptime: float) -> None:
    slow = cast(CSIConnection, FakeDiscovery({"CONTROLLER_SERVICE"}, set(), slow=True))
    with pytest.raises(CSIError, match=r"ControllerGetCapabilities failed: .*DeadlineExceeded"):
        await discover(slow)
    assert looptime == pytest.approx(1.0)


async def test_an_inline_volume_is_attached_from_its_own_spec() -> None:
    """`spec.source.inlineVolumeSpec` (a migrated inline volume): no PV, no PV finalizer."""
    cluster, csi = Cluster(), FakeCSI()
    cluster.add(CSI_NODES, csinode())
    inline = va(pv=None)
    inline["spec"]["source"]["inlineVolumeSpec"] = {
        "accessModes": ["ReadOnlyMany"],
        "csi": {"driver": DRIVER, "volumeHandle": "inline-1", "readOnly": True, "fsType": "ext4"},
    }
    cluster.add(VOLUME_ATTACHMENTS, inline)
    h = handler(cluster, csi, caps=Capabilities(publish_readonly=True))
    await sync(cluster, h)
    request = csi.calls[0][1]
    assert request.volume_id == "inline-1" and request.readonly is True
    assert (
        request.volume_capability.access_mode.mode
        == csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    )
    assert [w.resource for w in cluster.kube.writes()] == ["volumeattachments", "volumeattachments"]
    stored = cluster.va()
    assert stored is not None and stored["status"]["attached"] is True
    cluster.add(VOLUME_ATTACHMENTS, deleting(stored))
    await sync(cluster, h)
    assert csi.methods() == ["ControllerPublishVolume", "ControllerUnpublishVolume"]
    assert csi.calls[1][1].volume_id == "inline-1" and cluster.va() is None
