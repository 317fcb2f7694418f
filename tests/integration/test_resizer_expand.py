"""csi-resizer end to end: the real entrypoint expands volumes on the test bed, as the golden files show.

Each test starts `python -m sidecars.resizer` against the in-process API server and CSI test driver,
acts like a user (patches the PVC's request) and asserts on the API objects, the driver's state,
events and /metrics; kubelet's node half is played by `resizer_fixtures.node_expand`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from kit import SidecarProcess, eventually, free_port, scrape
from resizer_fixtures import (
    DRIVER,
    GOLDEN,
    bound_claim,
    capacity,
    claim,
    golden,
    node_expand,
    normalized,
    request,
    resizer_args,
    storage_status,
)

from common.kube.client import KubeClient
from common.kube.resources import EVENTS, LEASES, PERSISTENT_VOLUMES
from common.quantity import to_bytes
from testbed.csidriver import DriverConfig, TestDriver

RESIZER = "sidecars.resizer"
COMPONENT = f"external-resizer {DRIVER}"

Sidecar = Callable[..., SidecarProcess]


async def resizer_events(kube: KubeClient) -> list[dict[str, Any]]:
    items = (await kube.list(EVENTS, namespace="default"))["items"]
    mine = [e for e in items if (e.get("source") or {}).get("component") == COMPONENT]
    return sorted(mine, key=lambda e: (e["firstTimestamp"], e["metadata"]["name"]))


def event_shape(event: dict[str, Any], pv_name: str) -> dict[str, Any]:
    """What golden 16 pins of an event: everything but names, uids, versions and times."""
    involved = {k: v for k, v in event["involvedObject"].items() if k not in ("uid", "resourceVersion")}
    return {
        "type": event["type"],
        "reason": event["reason"],
        "message": event["message"].replace(pv_name, "<pv>"),
        "count": event["count"],
        "eventTime": event.get("eventTime"),
        "involvedObject": involved,
        "source": event["source"],
        "reportingComponent": event.get("reportingComponent"),
        "reportingInstance": event.get("reportingInstance"),
    }


def series(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def stop(process: SidecarProcess) -> None:
    """SIGTERM: exit 0, quietly (staged shutdown, no leaked tasks)."""
    assert await process.stop() == 0, process.log()[-3000:]
    log = process.log()
    assert "Task was destroyed but it is pending" not in log and "never awaited" not in log


async def test_controller_and_node_expansion_matches_the_golden_files(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    pv_name = pv["metadata"]["name"]
    port = free_port()
    args = ["--leader-election", "--leader-election-namespace=default", f"--http-endpoint=127.0.0.1:{port}"]
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver, *args), env={"POD_NAME": "vm"})
    await request(kube, "2Gi")

    # Golden 06 and 07: the claim and the volume while the node's part is pending.
    pending = await eventually(
        lambda: _status_is(kube, "NodeResizePending"), timeout=20, message="NodeResizePending"
    )
    assert normalized(pending) == normalized(golden("06-pvc-after-controller-expand.json"))
    grown = await kube.get(PERSISTENT_VOLUMES, pv_name)
    assert normalized(grown) == normalized(golden("07-pv-after-expand.json"))
    assert driver.volumes[pv["spec"]["csi"]["volumeHandle"]].capacity == to_bytes("2Gi")
    (expand,) = driver.calls.of("ControllerExpandVolume")
    assert dict(expand.request.secrets) == {"password": "secret"}  # the PV's controllerExpandSecretRef
    assert expand.request.volume_capability.mount.fs_type == "xfs"
    assert list(expand.request.volume_capability.mount.mount_flags) == ["noatime"]

    # Golden 16: the resizer's events, and 08: its Lease.
    events = await eventually(lambda: _events_at_least(kube, 2), message="two resizer events")
    want = [e for e in golden("16-events.json")["items"] if e["source"]["component"] == COMPONENT]
    golden_pv = golden("07-pv-after-expand.json")["metadata"]["name"]
    assert [event_shape(e, pv_name) for e in events] == [event_shape(e, golden_pv) for e in want]
    lease = await kube.get(LEASES, "external-resizer-hostpath-csi-k8s-io", namespace="default")
    (golden_lease,) = [
        x for x in golden("08-leases.json")["items"] if x["metadata"]["name"].startswith("external-resizer")
    ]
    for field in ("holderIdentity", "leaseDurationSeconds", "leaseTransitions"):
        assert lease["spec"][field] == golden_lease["spec"][field]

    # Golden 11: the metrics this expansion leaves.
    metrics = series(await scrape(port))
    method = '/csi.v1.Controller/ControllerExpandVolume"'
    assert (
        metrics[
            f'csi_sidecar_operations_seconds_count{{driver_name="{DRIVER}",grpc_status_code="OK",method_name="{method}}}'
        ]
        == 1
    )
    assert (
        f'csi_sidecar_operations_seconds_count{{driver_name="{DRIVER}",grpc_status_code="OK",method_name="/csi.v1.Controller/ControllerGetCapabilities"}}'
        in metrics
    )
    golden_names = {n.split("{")[0] for n in series(golden_text("11-resizer-metrics.txt"))}
    ours = {n.split("{")[0] for n in metrics}
    for family in (
        n for n in golden_names if n.startswith(("workqueue_", "csi_sidecar_", "leader_election_master"))
    ):
        assert family in ours, family
    assert metrics[f'workqueue_adds_total{{name="{DRIVER}-pvc"}}'] >= 1
    assert metrics['leader_election_master_status{name=""}'] == 1

    # The node finishes; the pre-resize annotation goes.
    finished = await node_expand(kube, driver)
    assert capacity(finished) == "2Gi"
    await eventually(lambda: _no_annotations(kube, pv_name), message="pre-resize annotation removed")
    assert len(driver.calls.of("ControllerExpandVolume")) == 1
    await stop(process)


def golden_text(name: str) -> str:
    return (GOLDEN / name).read_text()


async def _status_is(kube: KubeClient, status: str) -> dict[str, Any] | None:
    pvc = await claim(kube)
    return pvc if storage_status(pvc) == status else None


async def _events_at_least(kube: KubeClient, count: int) -> list[dict[str, Any]] | None:
    events = await resizer_events(kube)
    return events if len(events) >= count else None


async def _no_annotations(kube: KubeClient, pv_name: str) -> bool:
    pv = await kube.get(PERSISTENT_VOLUMES, pv_name)
    return "volume.alpha.kubernetes.io/pre-resize-capacity" not in (pv["metadata"].get("annotations") or {})


@pytest.fixture
def driver_config(request: pytest.FixtureRequest) -> DriverConfig:
    return dataclasses.replace(DriverConfig(), **getattr(request, "param", {}))


@pytest.mark.parametrize("driver_config", [{"node_expansion_required": False}], indirect=True)
async def test_controller_only_expansion_and_two_changes_in_a_row(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    driver.faults.add("ControllerExpandVolume", "delay", delay=0.5, count=1)
    await request(kube, "2Gi")
    await driver.calls.wait_for("ControllerExpandVolume")  # 2Gi is being expanded...
    await request(kube, "3Gi")  # ...when the user asks for more
    done = await eventually(lambda: _capacity_is(kube, "3Gi"), timeout=20, message="capacity 3Gi")
    assert done["status"]["allocatedResources"] == {"storage": "3Gi"}
    assert "allocatedResourceStatuses" not in done["status"] and "conditions" not in done["status"]
    assert done["metadata"]["annotations"]["volume.kubernetes.io/node-expansion-not-required"] == "true"
    grown = await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"])
    assert capacity(grown, "spec") == "3Gi"
    assert "volume.alpha.kubernetes.io/pre-resize-capacity" not in grown["metadata"]["annotations"]
    assert driver.volumes[pv["spec"]["csi"]["volumeHandle"]].capacity == to_bytes("3Gi")
    sizes = [c.request.capacity_range.required_bytes for c in driver.calls.of("ControllerExpandVolume")]
    assert sizes[0] == to_bytes("2Gi") and sizes[-1] == to_bytes("3Gi")
    events = await eventually(lambda: _events_at_least(kube, 2), message="resizer events")
    assert {"Resizing", "VolumeResizeSuccessful"} <= {e["reason"] for e in events}
    # And once more, later, with a size written differently.
    await request(kube, "3.5Gi")
    done = await eventually(lambda: _capacity_is(kube, "3584Mi"), timeout=20, message="capacity 3.5Gi")
    assert driver.volumes[pv["spec"]["csi"]["volumeHandle"]].capacity == to_bytes("3.5Gi")
    await stop(process)


@pytest.mark.parametrize(
    "driver_config",
    [{"controller_capabilities": frozenset({"CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME"})}],
    indirect=True,
)
async def test_trivial_resizer_leaves_the_expansion_to_the_node(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await request(kube, "2Gi")
    pending = await eventually(
        lambda: _status_is(kube, "NodeResizePending"), timeout=20, message="NodeResizePending"
    )
    assert [c["type"] for c in pending["status"]["conditions"]] == ["Resizing", "FileSystemResizePending"]
    grown = await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"])
    assert capacity(grown, "spec") == "2Gi"
    assert driver.calls.counts["ControllerExpandVolume"] == 0  # no controller call at all
    volume_id = pv["spec"]["csi"]["volumeHandle"]
    assert driver.volumes[volume_id].capacity == to_bytes("1Gi")
    await node_expand(kube, driver)  # the node grows it
    assert driver.volumes[volume_id].capacity == to_bytes("2Gi")
    assert capacity(await claim(kube)) == "2Gi"
    assert "the CSI driver supports node resize only, using trivial resizer" in process.log()
    assert "modify controller disabled" in process.log()  # no MODIFY_VOLUME either
    await stop(process)


async def _capacity_is(kube: KubeClient, size: str) -> dict[str, Any] | None:
    pvc = await claim(kube)
    return pvc if capacity(pvc) == size else None
