"""csi-attacher against fuzzed input: VolumeAttachment sources and node names, PV CSI sources, and
ControllerPublishVolume answers (huge publish_context) and errors.

Each case runs one attach sync with the unit fakes (an API server of dicts whose writes are limited
to 1.5 MiB like etcd's, a CSI stub) and must end with the VolumeAttachment attached, or with a
readable `status.attachError.message` and a raised `SyncError` (which the worker retries with
backoff) — never another exception, never attached without the driver having published.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_attacher_fakes import (
    DRIVER,
    FINALIZER,
    PV_NAME,
    Cluster,
    FakeCSI,
    FakeKube,
    FakeRpcError,
    csinode,
    pv,
    va,
)
from test_attacher_handler import handler

from common.kube.client import ApiError
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS, Resource
from proto import csi_pb2
from sidecars.attacher.handler import SyncError
from sidecars.attacher.request import NODE_ID_ANNOTATION, NODE_IDS_ANNOTATION

Obj = dict[str, Any]
ETCD_LIMIT = 3 * 2**19  # 1.5 MiB
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNREADABLE = re.compile(r"Traceback|object at 0x|<[a-zA-Z_.]+ object")


class LimitedKube(FakeKube):
    """A FakeKube refusing writes whose body exceeds etcd's object size limit, as kube-apiserver does."""

    async def patch(self, resource: Resource, name: str, patch: Any, **kw: Any) -> Obj:
        if len(json.dumps(patch)) > ETCD_LIMIT:
            self._failure("patch", resource)
            raise ApiError(413, "RequestEntityTooLarge", "etcdserver: request is too large")
        return await super().patch(resource, name, patch, **kw)


names = st.text(max_size=12) | st.sampled_from([PV_NAME, "", "node-1", "Node_1", "a" * 300, "../x"])
csi_sources = st.just({}) | st.fixed_dictionaries(  # typed as the API server stores them
    {},
    optional={
        "driver": st.sampled_from([DRIVER, "other.driver", ""]),
        "volumeHandle": st.text(min_size=1, max_size=6),
        "fsType": st.text(max_size=4),
        "volumeAttributes": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    },
)
inline_specs = st.none() | st.dictionaries(
    st.sampled_from(["csi", "accessModes", "x"]), csi_sources, max_size=2
)
good_source = st.just({"persistentVolumeName": PV_NAME})
sources = (
    good_source
    | good_source
    | st.fixed_dictionaries(
        {}, optional={"persistentVolumeName": st.none() | names, "inlineVolumeSpec": inline_specs}
    )
)
csi_fields = st.fixed_dictionaries(
    {},
    optional={
        "volumeHandle": st.text(min_size=1, max_size=10),  # required by the API server
        "fsType": st.text(max_size=5),
        "volumeAttributes": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        "controllerPublishSecretRef": st.fixed_dictionaries({"name": names, "namespace": names}),
        "readOnly": st.booleans(),
    },
)
access_modes = st.lists(
    st.sampled_from(["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod", "Bogus"]),
    max_size=3,
)
contexts = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4) | st.integers(1, 4).map(
    lambda megabytes: {f"k{i}": "x" * 1024 for i in range(megabytes * 1024)}
)  # fmt: skip
errors = st.sampled_from([c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])


@FUZZ
@given(
    source=sources,
    node=st.just("node-1") | names,
    fields=csi_fields,
    modes=access_modes,
    with_csinode=st.sampled_from([True, True, True, False]),
    answer=st.none() | contexts | errors,
    details=st.text(max_size=20),
)
async def test_attach_ends_attached_or_with_a_readable_attach_error(
    source: Obj, node: str, fields: Obj, modes: list[str], with_csinode: bool, answer: Any, details: str
) -> None:
    assume(node)  # the API server requires spec.nodeName
    cluster = Cluster(kube=LimitedKube())
    volume = pv()
    volume["spec"]["csi"].update(fields)
    volume["spec"]["accessModes"] = modes
    cluster.add(PERSISTENT_VOLUMES, volume)
    if with_csinode:
        cluster.add(CSI_NODES, csinode(node))
    attachment = va(node=node)
    attachment["spec"]["source"] = source
    cluster.add(VOLUME_ATTACHMENTS, attachment)
    csi = FakeCSI()
    if isinstance(answer, grpc.StatusCode):
        csi.publish_results.append(FakeRpcError(answer, details))
    elif answer is not None:
        csi.publish_results.append(csi_pb2.ControllerPublishVolumeResponse(publish_context=answer))
    h = handler(cluster, csi)
    cached = cluster.factory.informer(VOLUME_ATTACHMENTS).get("golden-va")
    assert cached is not None
    try:
        await h.sync_va(cached)
        raised = None
    except SyncError as err:
        raised = err
    stored = cluster.va()
    assert stored is not None
    status = stored.get("status") or {}
    published = [r for m, r in csi.calls if m == "ControllerPublishVolume"]
    if raised is None:
        assert status.get("attached") is True and published
        assert status.get("attachmentMetadata", {}) == (
            answer if isinstance(answer, dict) else {"device": "/dev/x"}
        )
    else:
        message = (status.get("attachError") or {}).get("message", "")
        assert message and not UNREADABLE.search(message), (raised, status)
        assert status.get("attached") is not True
    for request in published:
        assert request.node_id


async def test_a_publish_context_too_big_to_save_is_reported_in_attach_error() -> None:
    """Found by the fuzzing above: the VolumeAttachment said nothing about why it stayed unattached."""
    cluster = Cluster(kube=LimitedKube())
    cluster.add(PERSISTENT_VOLUMES, pv())
    cluster.add(CSI_NODES, csinode())
    cluster.add(VOLUME_ATTACHMENTS, va())
    csi = FakeCSI(
        publish_results=[csi_pb2.ControllerPublishVolumeResponse(publish_context={"blob": "x" * 2**21})]
    )
    h = handler(cluster, csi)
    cached = cluster.factory.informer(VOLUME_ATTACHMENTS).get("golden-va")
    assert cached is not None
    try:
        await h.sync_va(cached)
    except SyncError as err:
        assert "failed to mark as attached" in str(err)
    else:
        raise AssertionError("a 2 MiB publish context was saved")
    stored = cluster.va()
    assert stored is not None
    assert stored["status"]["attachError"]["message"] == (
        "failed to mark as attached: etcdserver: request is too large"
    )
    assert stored["status"]["attached"] is False


annotation_maps = st.dictionaries(
    st.sampled_from([NODE_ID_ANNOTATION, NODE_IDS_ANNOTATION, "x"]) | st.text(max_size=8),
    st.text(max_size=12),
    max_size=3,
)


@FUZZ
@given(
    annotations=annotation_maps,
    node_annotations=annotation_maps,
    with_csinode=st.booleans(),
    answer=st.none() | errors,
)
async def test_detach_with_fuzzed_annotations_ends_detached_or_with_a_readable_detach_error(
    annotations: dict[str, str], node_annotations: dict[str, str], with_csinode: bool, answer: Any
) -> None:
    cluster = Cluster(kube=LimitedKube())
    cluster.add(PERSISTENT_VOLUMES, pv())
    if with_csinode:
        cluster.add(CSI_NODES, csinode())
    cluster.add(NODES, {"metadata": {"name": "node-1", "annotations": node_annotations}})
    attachment = va(attached=True)
    attachment["metadata"].update(
        deletionTimestamp="2026-11-22T23:55:00Z", finalizers=[FINALIZER], annotations=annotations
    )
    cluster.add(VOLUME_ATTACHMENTS, attachment)
    csi = FakeCSI()
    if answer is not None:
        csi.unpublish_results.append(FakeRpcError(answer, "cannot detach"))
    h = handler(cluster, csi)
    cached = cluster.factory.informer(VOLUME_ATTACHMENTS).get("golden-va")
    assert cached is not None
    try:
        await h.sync_va(cached)
        raised = None
    except SyncError as err:
        raised = err
    stored = cluster.va()
    if raised is None:
        assert stored is None or FINALIZER not in stored["metadata"].get("finalizers", [])
    else:
        assert stored is not None
        message = ((stored.get("status") or {}).get("detachError") or {}).get("message", "")
        assert message and not UNREADABLE.search(message), (raised, stored.get("status"))
        assert FINALIZER in stored["metadata"]["finalizers"]
