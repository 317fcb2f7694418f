"""csi-provisioner and VolumeAttributesClass on create: mutable_parameters, the driver check, the gate.

The real `python -m sidecars.provisioner` against the test bed: a claim naming a VolumeAttributesClass
of this driver is created with the class's parameters as `mutable_parameters` and its PV carries the
class name; a class of another driver is refused with upstream's text. When discovery does not list
`volumeattributesclasses` (an older API server), the gate — on by default, not set on the command
line — turns itself off: the class name is then ignored, as upstream.
"""

from __future__ import annotations

from typing import Any

from kit import eventually
from provisioner_fixtures import Bed, claim, provisioner_bed, stop_cleanly

from testbed.apiserver import RESOURCES, ApiServer, Registry, Store
from testbed.csidriver import TestDriver

DRIVER = "hostpath.csi.k8s.io"


async def vac(bed: Bed, name: str, driver: str = DRIVER, **parameters: str) -> None:
    await bed.store.create(
        "volumeattributesclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttributesClass",
            "metadata": {"name": name},
            "driverName": driver,
            "parameters": parameters,
        },
    )


async def create(bed: Bed, name: str, class_name: str) -> dict[str, Any]:
    body = claim(name)
    body["spec"]["volumeAttributesClassName"] = class_name
    return await bed.store.create("persistentvolumeclaims", body, namespace="default")


async def test_volume_attributes_class_parameters_on_create(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        await vac(bed, "gold", iops="3000")
        await vac(bed, "alien", driver="other.csi.example.com", iops="1")
        process = bed.start()
        gold = await create(bed, "fast", "gold")
        pvc = await bed.wait_bound("fast")
        [call] = [
            c for c in driver.calls.of("CreateVolume") if c.request.name == f"pvc-{gold['metadata']['uid']}"
        ]
        assert dict(call.request.mutable_parameters) == {"iops": "3000"}
        pv = await bed.get("persistentvolumes", pvc["spec"]["volumeName"])
        assert pv is not None and pv["spec"]["volumeAttributesClassName"] == "gold"
        await create(bed, "odd", "alien")
        await bed.wait_event(
            "odd",
            "ProvisioningFailed",
            contains=f"VAC alien referenced in PVC is for driver other.csi.example.com which does not match "
            f"driver name {DRIVER}",
        )
        await stop_cleanly(process)


async def test_gate_turns_off_without_the_api(driver: TestDriver, sidecar: Any) -> None:
    # An API server without storage.k8s.io/v1 VolumeAttributesClasses (before Kubernetes 1.34).
    registry = Registry(r for r in RESOURCES if r.plural != "volumeattributesclasses")
    store = Store(registry=registry, bookmark_interval=0.2)
    async with (
        ApiServer(store=store, bookmark_interval=0.2) as old,
        provisioner_bed(old, driver, sidecar) as bed,
    ):
        process = bed.start()
        await create(bed, "plain", "does-not-exist")
        # Provisioned without looking the class up (the binder stand-in then waits for a PV of that
        # class, where a real old API server would have dropped the field).
        [pv] = await eventually(bed.pvs, timeout=20, message="the PV")
        [call] = driver.calls.of("CreateVolume")
        assert not call.request.mutable_parameters
        assert "volumeAttributesClassName" not in pv["spec"]
        assert not await bed.events("plain", "ProvisioningFailed")
        assert "VolumeAttributesClass API not available" in process.log()
        await stop_cleanly(process)
