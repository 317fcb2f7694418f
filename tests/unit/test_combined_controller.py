"""The combined process: one shared informer per resource, seen through each group's ScopedFactory."""

from __future__ import annotations

from typing import Any

import pytest

from common.kube.informer import InformerFactory, drop_managed_fields
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS, VOLUME_ATTACHMENTS
from common.metrics import Metrics
from common.runtime import Runtime, StandardConfig
from sidecars.combined.controller import ScopedFactory, scoped

Obj = dict[str, Any]


def shared() -> InformerFactory:
    return InformerFactory(None, resync=0.0)  # type: ignore[arg-type]


def typed(obj: Obj) -> Obj:
    obj["kind"] = "PersistentVolume"
    return obj


def slim(obj: Obj) -> Obj:
    return {"metadata": {"name": obj["metadata"]["name"]}, "kind": obj.get("kind")}


def test_each_group_sees_the_one_shared_informer_and_records_only_its_own() -> None:
    process = shared()
    provisioner = ScopedFactory(process, resync=3600.0)
    attacher = ScopedFactory(process, resync=600.0)
    pvs = provisioner.informer(PERSISTENT_VOLUMES)
    provisioner.informer(PERSISTENT_VOLUME_CLAIMS)
    assert attacher.informer(PERSISTENT_VOLUMES) is pvs
    attacher.informer(VOLUME_ATTACHMENTS)
    assert [str(i.resource) for i in provisioner.informers] == ["persistentvolumes", "persistentvolumeclaims"]
    assert [str(i.resource) for i in attacher.informers] == [
        "persistentvolumes",
        "volumeattachments.storage.k8s.io",
    ]
    assert len(process.informers) == 3
    assert attacher.informer(PODS, namespace="default") is not attacher.informer(
        PODS
    )  # another key, another watch


def test_an_informer_resyncs_at_the_shortest_period_its_groups_ask_for() -> None:
    process = shared()
    provisioner = ScopedFactory(process, resync=3600.0)
    resizer = ScopedFactory(process, resync=600.0)
    never = ScopedFactory(process, resync=0.0)
    pvs = provisioner.informer(PERSISTENT_VOLUMES)
    claims = provisioner.informer(PERSISTENT_VOLUME_CLAIMS)
    assert pvs.resync == 3600.0
    resizer.informer(PERSISTENT_VOLUMES)
    never.informer(PERSISTENT_VOLUMES)
    never.informer(PERSISTENT_VOLUME_CLAIMS)
    assert pvs.resync == 600.0  # 0 means "never" for that group, not "at once"
    assert claims.resync == 3600.0
    assert never.informer(PODS).resync == 0.0


def test_a_second_groups_transform_is_composed_after_the_first() -> None:
    process = shared()
    first = ScopedFactory(process, resync=0.0).informer(PERSISTENT_VOLUMES, transform=typed)
    ScopedFactory(process, resync=0.0).informer(PERSISTENT_VOLUMES, transform=slim)
    ScopedFactory(process, resync=0.0).informer(PERSISTENT_VOLUMES)  # the default: dropping managedFields
    obj = {"metadata": {"name": "pv-1", "managedFields": [{}], "labels": {"a": "b"}}}
    assert first.transform(obj) == {"metadata": {"name": "pv-1"}, "kind": "PersistentVolume"}
    same = ScopedFactory(process, resync=0.0)
    same.informer(PERSISTENT_VOLUME_CLAIMS, transform=drop_managed_fields)
    claims = same.informer(PERSISTENT_VOLUME_CLAIMS, transform=drop_managed_fields)
    assert claims.transform is drop_managed_fields  # the same function is not applied twice


def test_no_transform_is_added_to_an_informer_that_holds_objects() -> None:
    process = shared()
    pvs = ScopedFactory(process, resync=0.0).informer(PERSISTENT_VOLUMES)
    pvs.store.put({"metadata": {"name": "pv-1"}})
    with pytest.raises(RuntimeError, match="runs already"):
        ScopedFactory(process, resync=0.0).informer(PERSISTENT_VOLUMES, transform=typed)


def test_a_scoped_view_shares_connections_and_event_writers() -> None:
    rt = Runtime(
        program="csi-controller-sidecars",
        config=StandardConfig(timeout=15.0),
        metrics=Metrics(),
        csi=object(),  # type: ignore[arg-type]
        kube=object(),  # type: ignore[arg-type]
        election_client=object(),  # type: ignore[arg-type]
        factory=shared(),
        driver_name="hostpath.csi.k8s.io",
    )
    resizer = StandardConfig(timeout=10.0, leader_election=True)
    view = scoped(rt, resizer, resync=600.0)
    assert view.config is resizer and rt.config.timeout == 15.0
    assert (view.csi, view.kube, view.metrics, view.driver_name) == (
        rt.csi,
        rt.kube,
        rt.metrics,
        rt.driver_name,
    )
    assert isinstance(view.factory, ScopedFactory) and view.factory.shared is rt.factory
    view.recorders.append("writer")  # type: ignore[arg-type]
    assert rt.recorders == ["writer"]  # recorders made on the view are run and flushed by the runtime
