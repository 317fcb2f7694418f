"""The PV we build matches the one external-provisioner wrote in the golden run (01), field for field."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings, build_pv
from testbed.apiserver import Store

GOLDEN = Path(__file__).parent.parent / "golden"
DRIVER = "hostpath.csi.k8s.io"
TOPOLOGY_KEY = "topology.hostpath.csi/node"


class SecretsOnly:
    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        assert (resource.plural, name, namespace) == ("secrets", "prov-secret", "default")
        return {"data": {"key": base64.b64encode(b"value").decode()}}


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / name).read_text())
    return data


def golden_storage_class() -> dict[str, Any]:
    """StorageClass `golden` of the golden run (upstream-golden/README.md)."""
    prefix = "csi.storage.k8s.io/"
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "golden"},
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
        "mountOptions": ["noatime"],
        "parameters": {
            prefix + "fstype": "xfs",
            prefix + "provisioner-secret-name": "prov-secret",
            prefix + "provisioner-secret-namespace": "default",
            prefix + "controller-expand-secret-name": "prov-secret",
            prefix + "controller-expand-secret-namespace": "default",
            "tier": "gold",
        },
    }


def golden_claim() -> dict[str, Any]:
    """PVC default/data as the provisioner saw it (uid and resourceVersion of the golden run)."""
    pvc = golden("02-bound-pvc.json")
    pvc["metadata"]["resourceVersion"] = "222"
    pvc["spec"].pop("volumeName")
    pvc["status"] = {"phase": "Pending"}
    return pvc


def normalized(pv: dict[str, Any]) -> dict[str, Any]:
    """Drop what differs between any two runs: server-set identity and times, the driver's handle."""
    pv = copy.deepcopy(pv)
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        pv["metadata"].pop(key, None)
    pv.pop("status", None)
    pv["spec"]["csi"]["volumeHandle"] = "<handle>"
    identity = pv["spec"]["csi"]["volumeAttributes"][names.PROVISIONER_ID_KEY]
    millis, number, driver = identity.split("-", 2)
    assert millis.isdigit() and number.isdigit() and 0 <= int(number) < 10000 and driver == DRIVER
    pv["spec"]["csi"]["volumeAttributes"][names.PROVISIONER_ID_KEY] = "<identity>"
    return pv


async def test_provisioned_pv_matches_golden_01() -> None:
    claim, sc = golden_claim(), golden_storage_class()
    builder = RequestBuilder(
        config=ProvisionerConfig(standard=StandardConfig()),
        driver=Driver(
            name=DRIVER,
            plugin_capabilities=frozenset({"CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS"}),
        ),
        kube=SecretsOnly(),  # type: ignore[arg-type]
        nodes=NodeView(
            {"node-1": {"spec": {"drivers": [{"name": DRIVER, "topologyKeys": [TOPOLOGY_KEY]}]}}},
            {"node-1": {"metadata": {"name": "node-1", "labels": {TOPOLOGY_KEY: "node-1"}}}},
        ),
        topology_cache=TopologyCache(),
    )
    prepared = await builder.prepare(claim, sc, "")
    answer = csi_pb2.Volume(
        volume_id="186a18bd-e6d0-11f1-bbd4-c619a4a2584b",
        capacity_bytes=prepared.request.capacity_range.required_bytes,
        volume_context={"tier": "gold"},  # csi-driver-host-path echoes the parameters
        accessible_topology=[csi_pb2.Topology(segments={TOPOLOGY_KEY: "node-1"})],
    )
    settings = PVSettings(driver=DRIVER, identity=names.provisioner_identity(DRIVER), topology=True)
    pv = build_pv(claim, sc, prepared, answer, settings)
    store = Store()  # the test bed's API server semantics: defaults and the pv-protection admission
    saved = await store.create("persistentvolumes", pv)
    assert normalized(saved) == normalized(golden("01-provisioned-pv.json"))


def test_zero_capacity_answer_uses_the_request_and_block_has_no_fstype() -> None:
    from sidecars.provisioner.request import Prepared

    request = csi_pb2.CreateVolumeRequest(name="pvc-1")
    request.capacity_range.required_bytes = 5 * 2**20
    rox = request.volume_capabilities.add()
    rox.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    prepared = Prepared(request=request, fs_type="ext4", secret_refs={}, deletion_secret=("", ""))
    claim = {
        "metadata": {"name": "c", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
        "spec": {"accessModes": ["ReadOnlyMany"], "volumeMode": "Block", "storageClassName": "sc"},
    }
    settings = PVSettings(driver=DRIVER, identity="1-2-x", topology=True, controller_publish_readonly=True)
    pv = build_pv(claim, {"provisioner": DRIVER}, prepared, csi_pb2.Volume(volume_id="v1"), settings)
    assert pv["spec"]["capacity"] == {"storage": "5Mi"}
    assert "fsType" not in pv["spec"]["csi"] and pv["spec"]["csi"]["readOnly"] is True
    assert "nodeAffinity" not in pv["spec"] and "persistentVolumeReclaimPolicy" not in pv["spec"]
    assert pv["metadata"]["annotations"] == {
        names.ANN_PROVISIONED_BY: DRIVER,
        names.ANN_DELETION_SECRET_NAME: "",
        names.ANN_DELETION_SECRET_NAMESPACE: "",
    }
    assert pv["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": "c",
        "namespace": "ns",
        "resourceVersion": "7",
        "uid": "u",
    }
