"""The attach controller: which informer events queue which keys, the reconciler, and the workers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from kit import FakeRpcError
from test_attacher_fakes import DRIVER, FINALIZER, PV_NAME, Cluster, FakeCSI, csinode, pv, va

from common.csi import CSIConnection
from common.kube.client import KubeClient
from common.kube.informer import InformerFactory
from common.kube.resources import CSI_NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from common.metrics import Metrics
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.attacher.cli import AttacherConfig
from sidecars.attacher.controller import AttachController
from sidecars.attacher.handler import Capabilities, LatestWrites
from sidecars.attacher.reconciler import list_published, mismatches

Entry = csi_pb2.ListVolumesResponse.Entry


@dataclass
class Conns:
    kube: KubeClient
    csi: CSIConnection
    factory: InformerFactory
    metrics: Metrics = field(default_factory=Metrics)
    driver_name: str = DRIVER


def controller(
    cluster: Cluster, csi: FakeCSI, *, caps: Capabilities | None = None, trivial: bool = False, **config: Any
) -> AttachController:
    conns = Conns(kube=cluster.kube.client(), csi=csi.connection(), factory=cluster.factory)
    settings = AttacherConfig(standard=StandardConfig(timeout=15.0), **config)
    return AttachController(
        config=settings,
        conns=conns,
        capabilities=None if trivial else (caps or Capabilities(list_published_nodes=True)),
    )


def queued(queue: Any) -> list[str]:
    return list(queue._queue)


def other_driver_va() -> dict[str, Any]:
    obj = va("foreign")
    obj["spec"]["attacher"] = "other.csi.example.com"
    return obj


async def test_only_our_vas_are_queued_and_error_reports_are_not() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi)
    informer = cluster.factory.informer(VOLUME_ATTACHMENTS)
    ours = {**va(), "metadata": {"name": "golden-va", "resourceVersion": "1"}}
    informer._notify("ADDED", None, ours)
    informer._notify("ADDED", None, other_driver_va())
    assert queued(ctrl.va_queue) == ["golden-va"]
    ctrl.va_queue._queue.clear()
    ctrl.va_queue._dirty.clear()
    errored = json.loads(json.dumps(ours))
    errored["metadata"]["resourceVersion"] = "2"
    errored["status"]["attachError"] = {"message": "boom", "time": "t"}
    informer._notify("MODIFIED", ours, errored)
    assert queued(ctrl.va_queue) == []
    informer._notify("MODIFIED", errored, errored)  # resync
    assert queued(ctrl.va_queue) == ["golden-va"]


async def test_deleted_va_queues_its_pv_and_a_deleting_pv_with_our_finalizer_is_queued() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi)
    cluster.factory.informer(VOLUME_ATTACHMENTS)._notify("DELETED", None, va())
    assert queued(ctrl.pv_queue) == [PV_NAME]
    ctrl.pv_queue._queue.clear()
    ctrl.pv_queue._dirty.clear()
    pvs = cluster.factory.informer(PERSISTENT_VOLUMES)
    live = pv(finalizers=[FINALIZER])
    pvs._notify("ADDED", None, live)
    doomed = json.loads(json.dumps(live))
    doomed["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pvs._notify("MODIFIED", live, doomed)
    assert queued(ctrl.pv_queue) == [PV_NAME]


async def test_a_csinode_with_our_driver_queues_the_vas_waiting_on_its_node() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi)
    cluster.add(VOLUME_ATTACHMENTS, va("waiting", node="node-2"))
    cluster.add(VOLUME_ATTACHMENTS, va("done", node="node-2", attached=True))
    cluster.add(VOLUME_ATTACHMENTS, va("elsewhere", node="node-3"))
    csinodes = cluster.factory.informer(CSI_NODES)
    csinodes._notify("ADDED", None, csinode("node-2", driver="other"))
    assert queued(ctrl.va_queue) == []
    csinodes._notify("MODIFIED", csinode("node-2", driver="other"), csinode("node-2"))
    assert queued(ctrl.va_queue) == ["waiting"]


async def test_trivial_mode_watches_no_pvs_or_csinodes() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi, trivial=True)
    assert ctrl.pvs is None and not ctrl.reconciles
    assert [i.resource for i in cluster.factory.informers] == [VOLUME_ATTACHMENTS]


async def test_list_published_pages_through_every_entry() -> None:
    csi = FakeCSI(
        list_pages=[
            csi_pb2.ListVolumesResponse(
                entries=[
                    Entry(
                        volume=csi_pb2.Volume(volume_id="a"),
                        status=csi_pb2.ListVolumesResponse.VolumeStatus(published_node_ids=["n1"]),
                    )
                ],
                next_token="2",
            ),
            csi_pb2.ListVolumesResponse(entries=[Entry(volume=csi_pb2.Volume(volume_id="b"))]),
        ]
    )
    assert await list_published(csi, max_entries=1, timeout=5) == {"a": ["n1"], "b": []}
    assert [(c[1].starting_token, c[1].max_entries) for c in csi.calls] == [("", 1), ("2", 1)]


async def test_list_published_failure_is_reported_like_upstream() -> None:
    import grpc

    csi = FakeCSI(list_pages=[FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")])
    with pytest.raises(
        Exception, match=r"^failed to ListVolumes: failed to list volumes: rpc error: code = Unavailable"
    ):
        await list_published(csi, max_entries=0, timeout=5)


def test_mismatches_compare_status_with_the_published_nodes() -> None:
    pvs = {PV_NAME: pv()}
    vas = [
        va("lost", attached=True),  # the driver forgot it
        va("fine", attached=True),
        va("late", node="node-2"),  # published but not yet marked
        other_driver_va(),
    ]
    vas[1]["spec"]["source"]["persistentVolumeName"] = "pv-fine"
    pvs["pv-fine"] = pv("pv-fine", volumeHandle="vol-fine")
    published = {"vol-1": ["node-2"], "vol-fine": ["node-1"]}
    found = mismatches(vas, published, driver=DRIVER, node_id=lambda v: v["spec"]["nodeName"], pvs=pvs.get)
    assert [(m.name, m.published) for m in found] == [("lost", False), ("late", True)]


async def test_reconcile_forces_a_sync_of_what_the_driver_lost() -> None:
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(CSI_NODES, csinode())
    cluster.add(VOLUME_ATTACHMENTS, va(attached=True))
    csi = FakeCSI(list_pages=[csi_pb2.ListVolumesResponse()])
    ctrl = controller(cluster, csi)
    await ctrl.reconcile()
    assert queued(ctrl.va_queue) == ["golden-va"]
    await ctrl.sync_va("golden-va")  # forced: attached, yet published again
    assert csi.methods() == ["ListVolumes", "ControllerPublishVolume"]


async def test_workers_attach_and_drain_on_cancel() -> None:
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(CSI_NODES, csinode())
    csi = FakeCSI()
    ctrl = controller(cluster, csi, caps=Capabilities(), worker_threads=2)
    for name in ("a", "b", "c"):
        cluster.add(VOLUME_ATTACHMENTS, va(name))
        ctrl.va_queue.add(name)
    task = asyncio.create_task(ctrl.run(), name="controller under test")
    for _ in range(200):
        if len(csi.calls) == 3 and ctrl.va_queue.len() == 0:
            break
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sorted(c[1].volume_id for c in csi.calls) == ["vol-1"] * 3
    assert all((cluster.va(n) or {})["status"]["attached"] for n in ("a", "b", "c"))


async def test_reconnect_queues_the_vas_with_work_left() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi)
    cluster.add(VOLUME_ATTACHMENTS, va("pending"))
    cluster.add(VOLUME_ATTACHMENTS, va("attached", attached=True))
    gone = va("detaching", attached=True)
    gone["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[FINALIZER])
    cluster.add(VOLUME_ATTACHMENTS, gone)
    [callback] = csi.callbacks
    await callback()
    assert sorted(queued(ctrl.va_queue)) == ["detaching", "pending"]


def _at(rv: str, **status: Any) -> dict[str, Any]:
    obj = va(**status)
    obj["metadata"]["resourceVersion"] = rv
    return obj


def test_latest_writes_win_over_a_stale_cache_until_the_informer_catches_up() -> None:
    latest = LatestWrites()
    latest.wrote(_at("12", attached=True))
    assert latest.freshest(_at("10"))["status"]["attached"] is True  # cache behind our write
    latest.seen(_at("11"))  # an older event arrives: keep ours
    assert latest.freshest(_at("11"))["metadata"]["resourceVersion"] == "12"
    latest.seen(_at("12", attached=True))
    assert len(latest) == 0
    assert latest.freshest(_at("10"))["metadata"]["resourceVersion"] == "10"
    latest.wrote({"metadata": {"name": "golden-va", "resourceVersion": "opaque"}})
    assert len(latest) == 0  # not comparable: the cache is used, as upstream


async def test_a_requeue_from_our_own_write_does_not_publish_twice() -> None:
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(CSI_NODES, csinode())
    stale = cluster.add(VOLUME_ATTACHMENTS, va())
    csi = FakeCSI()
    ctrl = controller(cluster, csi, caps=Capabilities())
    await ctrl.sync_va("golden-va")
    assert cluster.factory.informer(VOLUME_ATTACHMENTS).get("golden-va") == stale  # the cache lags
    await ctrl.sync_va("golden-va")
    assert csi.methods() == ["ControllerPublishVolume"]


async def test_a_new_pv_queues_the_vas_that_waited_for_it() -> None:
    cluster, csi = Cluster(), FakeCSI()
    ctrl = controller(cluster, csi)
    cluster.add(VOLUME_ATTACHMENTS, va("early"))
    cluster.add(VOLUME_ATTACHMENTS, va("other", pv="pv-other"))
    cluster.factory.informer(PERSISTENT_VOLUMES)._notify("ADDED", None, pv())
    assert queued(ctrl.va_queue) == ["early"]
