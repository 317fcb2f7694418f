"""The CreateVolumeRequest built for a claim: name, capacity, capabilities, parameters, secrets, topology."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from common.kube.client import ApiError
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.request import Driver, RequestBuilder, fs_type, strip_parameters
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.topology import NodeView, TopologyCache

DRIVER = "hostpath.csi.k8s.io"
UID = "85bea930-1778-4a6f-b67e-4d20ad56dee6"
PREFIX = "csi.storage.k8s.io/"
MODE = csi_pb2.VolumeCapability.AccessMode


class FakeKube:
    """The two GETs the request builder makes: Secrets and VolumeAttributesClasses."""

    def __init__(self, objects: dict[tuple[str, str, str | None], dict[str, Any]]) -> None:
        self.objects = objects
        self.gets: list[tuple[str, str, str | None]] = []

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        key = (resource.plural, name, namespace)
        self.gets.append(key)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return self.objects[key]


def secret(**data: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def make_claim(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default", "uid": UID, "annotations": {"team": "blue"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "golden",
            "volumeMode": "Filesystem",
            **spec,
        },
    }


GOLDEN_SC = {
    "metadata": {"name": "golden"},
    "provisioner": DRIVER,
    "mountOptions": ["noatime"],
    "parameters": {
        PREFIX + "fstype": "xfs",
        PREFIX + "provisioner-secret-name": "prov-secret",
        PREFIX + "provisioner-secret-namespace": "default",
        PREFIX + "controller-expand-secret-name": "prov-secret",
        PREFIX + "controller-expand-secret-namespace": "default",
        "tier": "gold",
    },
}


def builder(
    *,
    kube: FakeKube | None = None,
    driver: Driver | None = None,
    nodes: NodeView | None = None,
    **config: Any,
) -> RequestBuilder:
    return RequestBuilder(
        config=ProvisionerConfig(standard=StandardConfig(), **config),
        driver=driver or Driver(name=DRIVER),
        kube=kube or FakeKube({("secrets", "prov-secret", "default"): secret(password="hunter2")}),  # type: ignore[arg-type]
        nodes=nodes,
        topology_cache=TopologyCache(),
    )


async def prepare(
    b: RequestBuilder, claim: dict[str, Any] | None = None, sc: Any = None, node: str = ""
) -> Any:
    return await b.prepare(claim or make_claim(), sc or GOLDEN_SC, node)


async def test_golden_storage_class_request() -> None:
    prepared = await prepare(builder())
    req = prepared.request
    assert req.name == f"pvc-{UID}"
    assert req.capacity_range.required_bytes == 2**30
    assert not req.capacity_range.limit_bytes
    assert dict(req.parameters) == {"tier": "gold"}
    assert dict(req.secrets) == {"password": "hunter2"}
    [cap] = req.volume_capabilities
    assert cap.access_mode.mode == MODE.SINGLE_NODE_WRITER
    assert (cap.mount.fs_type, list(cap.mount.mount_flags)) == ("xfs", ["noatime"])
    assert not req.HasField("accessibility_requirements")
    assert prepared.fs_type == "xfs"
    assert prepared.deletion_secret == ("prov-secret", "default")
    assert prepared.secret_refs == {
        "controllerExpandSecretRef": {"name": "prov-secret", "namespace": "default"}
    }


async def test_volume_name_uuid_length_and_prefix() -> None:
    prepared = await prepare(builder(volume_name_prefix="vol", volume_name_uuid_length=8))
    assert prepared.request.name == "vol-85bea930"
    with pytest.raises(ProvisionError, match="volume name prefix cannot be of length 0") as err:
        await prepare(builder(volume_name_prefix=""))
    assert err.value.state is ProvisioningState.FINISHED


async def test_access_modes_block_and_single_node_multi_writer() -> None:
    claim = make_claim(accessModes=["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"])
    plain = (await prepare(builder(), claim)).request.volume_capabilities
    assert [c.access_mode.mode for c in plain] == [
        MODE.SINGLE_NODE_WRITER,
        MODE.MULTI_NODE_READER_ONLY,
        MODE.MULTI_NODE_MULTI_WRITER,
        MODE.SINGLE_NODE_WRITER,
    ]
    snmw = Driver(
        name=DRIVER, controller_capabilities=frozenset({"CREATE_DELETE_VOLUME", "SINGLE_NODE_MULTI_WRITER"})
    )
    modes = [
        c.access_mode.mode for c in (await prepare(builder(driver=snmw), claim)).request.volume_capabilities
    ]
    assert modes[0] == MODE.SINGLE_NODE_MULTI_WRITER and modes[3] == MODE.SINGLE_NODE_SINGLE_WRITER
    block = (await prepare(builder(), make_claim(volumeMode="Block"))).request.volume_capabilities[0]
    assert block.HasField("block") and not block.HasField("mount")


async def test_default_fstype_and_fstype_conflicts() -> None:
    sc = {**GOLDEN_SC, "parameters": {"tier": "gold"}}
    assert (await prepare(builder(default_fstype="ext4"), sc=sc)).request.volume_capabilities[
        0
    ].mount.fs_type == "ext4"
    assert fs_type({"fsType": "ext3"}, "") == "ext3"  # the deprecated key, any case
    with pytest.raises(ProvisionError, match='fstype specified in parameters with both "fstype"'):
        fs_type({"fstype": "a", PREFIX + "fstype": "b"}, "")


async def test_extra_create_metadata() -> None:
    params = (await prepare(builder(extra_create_metadata=True))).request.parameters
    assert dict(params) == {
        "tier": "gold",
        PREFIX + "pvc/name": "data",
        PREFIX + "pvc/namespace": "default",
        PREFIX + "pv/name": f"pvc-{UID}",
    }


def test_unknown_prefixed_parameter_is_refused() -> None:
    with pytest.raises(ProvisionError) as err:
        strip_parameters({PREFIX + "bogus": "x"})
    assert str(err.value) == (
        "failed to strip CSI Parameters of prefixed keys: found unknown parameter key "
        '"csi.storage.k8s.io/bogus" '
        "with reserved namespace csi.storage.k8s.io/"
    )
    # deprecated unprefixed secret keys are honoured and passed through, as upstream
    assert strip_parameters({"csiProvisionerSecretName": "s"}) == {"csiProvisionerSecretName": "s"}


async def test_missing_secret_is_no_change_with_upstream_text() -> None:
    with pytest.raises(ProvisionError) as err:
        await prepare(builder(kube=FakeKube({})))
    assert err.value.state is ProvisioningState.NO_CHANGE
    assert (
        str(err.value)
        == 'error getting secret prov-secret in namespace default: secrets "prov-secret" not found'
    )


async def test_template_with_missing_annotation_is_no_change() -> None:
    sc = {
        **GOLDEN_SC,
        "parameters": {
            PREFIX + "provisioner-secret-name": "${pvc.annotations['missing']}",
            PREFIX + "provisioner-secret-namespace": "${pvc.namespace}",
        },
    }
    with pytest.raises(ProvisionError, match="invalid tokens") as err:
        await prepare(builder(), sc=sc)
    assert err.value.state is ProvisioningState.NO_CHANGE


async def test_secret_name_from_claim_annotation() -> None:
    sc = {
        **GOLDEN_SC,
        "parameters": {
            PREFIX + "provisioner-secret-name": "${pvc.annotations['team']}-secret",
            PREFIX + "provisioner-secret-namespace": "${pvc.namespace}",
            PREFIX + "node-stage-secret-name": "${pv.name}",
            PREFIX + "node-stage-secret-namespace": "${pvc.namespace}",
        },
    }
    kube = FakeKube({("secrets", "blue-secret", "default"): secret(token="t")})
    prepared = await prepare(builder(kube=kube), sc=sc)
    assert dict(prepared.request.secrets) == {"token": "t"}
    assert prepared.deletion_secret == ("blue-secret", "default")
    assert prepared.secret_refs == {"nodeStageSecretRef": {"name": f"pvc-{UID}", "namespace": "default"}}


async def test_capabilities_are_required() -> None:
    no_controller = Driver(name=DRIVER, plugin_capabilities=frozenset())
    with pytest.raises(ProvisionError, match="plugin CONTROLLER_SERVICE capability is not reported"):
        await prepare(builder(driver=no_controller))
    with pytest.raises(ProvisionError, match="controller CREATE_DELETE_VOLUME capability is not reported"):
        await prepare(builder(driver=Driver(name=DRIVER, controller_capabilities=frozenset())))


async def test_selector_is_refused() -> None:
    with pytest.raises(ProvisionError, match="claim Selector is not supported"):
        await prepare(builder(), make_claim(selector={"matchLabels": {"a": "b"}}))


async def test_data_sources_without_a_resolver_are_refused_and_populators_are_left_alone() -> None:
    snap = make_claim(
        dataSource={"kind": "VolumeSnapshot", "name": "s1", "apiGroup": "snapshot.storage.k8s.io"}
    )
    with pytest.raises(ProvisionError, match="CREATE_DELETE_SNAPSHOT capability is not reported"):
        await prepare(builder(), snap)  # the capability check comes first, as upstream
    capable = Driver(
        name=DRIVER,
        controller_capabilities=frozenset({"CREATE_DELETE_VOLUME", "CREATE_DELETE_SNAPSHOT", "CLONE_VOLUME"}),
    )
    with pytest.raises(ProvisionError, match="volume data sources are not supported: cannot") as err:
        await prepare(builder(driver=capable), snap)
    assert err.value.stop and err.value.state is ProvisioningState.FINISHED
    clone = make_claim(dataSourceRef={"kind": "PersistentVolumeClaim", "name": "src"})
    with pytest.raises(ProvisionError, match='cannot provision from PersistentVolumeClaim "src"'):
        await prepare(builder(driver=capable), clone)
    seen: list[str] = []
    b = builder()
    b.on_populator = lambda claim: seen.append(claim["metadata"]["name"])
    with pytest.raises(IgnoredClaim):
        await prepare(b, make_claim(dataSourceRef={"kind": "Thing", "name": "x", "apiGroup": "example.com"}))
    assert seen == ["data"]
    cross = make_claim(dataSourceRef={"kind": "VolumeSnapshot", "name": "s", "namespace": "other"})
    with pytest.raises(ProvisionError, match="CrossNamespaceVolumeDataSource feature is disabled"):
        await prepare(builder(), cross)


async def test_topology_requirements_and_reschedule_on_missing_csinode() -> None:
    view = NodeView(
        {"node-1": {"spec": {"drivers": [{"name": DRIVER, "topologyKeys": ["zone"]}]}}},
        {"node-1": {"metadata": {"name": "node-1", "labels": {"zone": "z1"}}}},
    )
    topo = Driver(
        name=DRIVER, plugin_capabilities=frozenset({"CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS"})
    )
    req = (await prepare(builder(driver=topo, nodes=view), node="node-1")).request
    assert [dict(t.segments) for t in req.accessibility_requirements.requisite] == [{"zone": "z1"}]
    assert [dict(t.segments) for t in req.accessibility_requirements.preferred] == [{"zone": "z1"}]
    with pytest.raises(ProvisionError) as err:
        await prepare(builder(driver=topo, nodes=view), node="gone")
    assert err.value.state is ProvisioningState.RESCHEDULE
    gate_off = dataclasses.replace(topo, topology_gate=False)
    assert not (await prepare(builder(driver=gate_off, nodes=view), node="node-1")).request.HasField(
        "accessibility_requirements"
    )


async def test_volume_attributes_class_parameters() -> None:
    modify = Driver(name=DRIVER, controller_capabilities=frozenset({"CREATE_DELETE_VOLUME", "MODIFY_VOLUME"}))
    kube = FakeKube(
        {
            ("secrets", "prov-secret", "default"): secret(),
            ("volumeattributesclasses", "fast", None): {"driverName": DRIVER, "parameters": {"iops": "100"}},
            ("volumeattributesclasses", "alien", None): {"driverName": "other", "parameters": {}},
        }
    )
    claim = make_claim(volumeAttributesClassName="fast")
    assert dict((await prepare(builder(kube=kube, driver=modify), claim)).request.mutable_parameters) == {
        "iops": "100"
    }
    with pytest.raises(ProvisionError, match="MODIFY_VOLUME capability is not reported"):
        await prepare(builder(kube=kube), claim)
    with pytest.raises(ProvisionError, match="VAC alien referenced in PVC is for driver other"):
        await prepare(builder(kube=kube, driver=modify), make_claim(volumeAttributesClassName="alien"))
