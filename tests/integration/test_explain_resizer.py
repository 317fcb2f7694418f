"""`csi-resizer explain pvc NAMESPACE/NAME`: one test per state the resizer can leave a claim in.

Each test builds the state on the test-bed API server (a bound claim and its PV as golden 02/04, the
status a resize leaves: in progress, infeasible, waiting for the node...) with the CSI test driver
serving, asks the resizer's explain for the claim and asserts on the headline and the facts. One test
runs the real entrypoint (`python -m sidecars.resizer explain pvc ...`).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

import pytest
from kit import ROOT
from resizer_fixtures import DRIVER, bound_claim, request

from common.explain import Report, Session
from common.kube.client import KubeClient
from common.kube.events import WARNING, object_reference
from common.kube.resources import EVENTS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS
from sidecars.resizer.cli import PROGRAM, ResizerConfig, build_flagset
from sidecars.resizer.explain import explain_pvc
from testbed.csidriver import (
    DEFAULT_CONTROLLER_CAPABILITIES,
    DEFAULT_NODE_CAPABILITIES,
    DriverConfig,
    TestDriver,
)

NO_CONTROLLER_EXPAND = DEFAULT_CONTROLLER_CAPABILITIES - {"EXPAND_VOLUME"}


async def explained(kubeconfig: str, address: str, *extra: str, name: str = "data") -> Report:
    flags = build_flagset().parse([f"--kubeconfig={kubeconfig}", f"--csi-address={address}", *extra])
    config = ResizerConfig.from_flags(flags)
    async with Session.open(PROGRAM, config.standard) as session:
        return await explain_pvc(session, config, "default", name)


async def set_status(kube: KubeClient, status: dict[str, Any], name: str = "data") -> None:
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, name, {"status": status}, namespace="default", subresource="status"
    )


def condition(kind: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": None,
        "message": message,
    }


async def test_missing_claim(kubeconfig: str, driver: TestDriver) -> None:
    report = await explained(kubeconfig, driver.address, name="nope")
    assert report.verdict == "Nothing to do: PersistentVolumeClaim default/nope does not exist."


async def test_unbound_claim(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await kube.create(
        PERSISTENT_VOLUME_CLAIMS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == "Nothing to do yet: the claim is not bound to a volume (phase Pending)."


async def test_no_resize_needed(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await bound_claim(kube, driver)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == "Nothing to do: no resize needed (it requests 1Gi and has 1Gi)."
    assert "The driver hostpath.csi.k8s.io expands volumes with ControllerExpandVolume." in report.facts
    assert "Sizes: requests 1Gi, status capacity 1Gi." in report.facts


async def test_bigger_request_would_be_expanded(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    _, pv = await bound_claim(kube, driver)
    await request(kube, "2Gi")
    report = await explained(kubeconfig, driver.address)
    handle = pv["spec"]["csi"]["volumeHandle"]
    assert report.verdict == (
        f"Would expand the volume from 1Gi to 2Gi (ControllerExpandVolume(volume {handle!r}, 2Gi))."
    )


async def test_missing_pv(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    _, pv = await bound_claim(kube, driver)
    name = pv["metadata"]["name"]
    await kube.patch(PERSISTENT_VOLUMES, name, {"metadata": {"finalizers": []}})
    await kube.delete(PERSISTENT_VOLUMES, name)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == f"Waiting: its PersistentVolume {name} does not exist."


async def test_volume_of_another_driver(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await bound_claim(kube, driver)
    report = await explained(kubeconfig, driver.address, name="data")
    assert report.verdict.startswith("Nothing to do: no resize")  # ours first: then another driver's
    other = TestDriver(replace(DriverConfig(), name="other.csi.example.com"))
    async with other.serve(driver.address.replace("csi.sock", "other.sock")):
        report = await explained(kubeconfig, other.address)
    assert report.verdict.endswith(f"belongs to driver {DRIVER!r}, not 'other.csi.example.com'.")


async def test_pv_bound_to_another_claim(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    _, pv = await bound_claim(kube, driver)
    await kube.patch(
        PERSISTENT_VOLUMES, pv["metadata"]["name"], {"spec": {"claimRef": {"uid": "someone-else"}}}
    )
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith(
        f"Nothing to do: PersistentVolume {pv['metadata']['name']} is bound to claim"
    )
    assert "(uid someone-else), not to this one." in report.verdict


async def test_resize_in_progress_is_retried_with_the_same_size(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await bound_claim(kube, driver)
    await request(kube, "3Gi")
    await set_status(
        kube,
        {
            "allocatedResources": {"storage": "2Gi"},
            "allocatedResourceStatuses": {"storage": "ControllerResizeInProgress"},
            "conditions": [condition("Resizing", "")],
        },
    )
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith("Retrying with backoff: ControllerExpandVolume(")
    assert report.verdict.endswith(", 2Gi) with the same size (in progress, or interrupted).")
    assert (
        "Sizes: requests 3Gi, status capacity 1Gi, allocated 2Gi, resize status ControllerResizeInProgress."
        in (report.facts)
    )


async def test_infeasible_resize_waits_for_the_slow_retry(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await bound_claim(kube, driver)
    await request(kube, "500Gi")
    message = "failed to expand pvc with rpc error: code = OutOfRange desc = too big"
    await set_status(
        kube,
        {
            "allocatedResources": {"storage": "500Gi"},
            "allocatedResourceStatuses": {"storage": "ControllerResizeInfeasible"},
            "conditions": [condition("ControllerResizeError", message)],
        },
    )
    report = await explained(kubeconfig, driver.address, "--retry-interval-max=2m")
    assert report.verdict == (
        f"Waiting: expanding to 500Gi is infeasible ({message}); csi-resizer tries again only every "
        "--retry-interval-max (120s) or when the request changes."
    )
    assert f"Condition ControllerResizeError: {message}" in report.facts


async def test_waiting_for_the_node(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    _, pv = await bound_claim(kube, driver)
    await request(kube, "2Gi")
    await kube.patch(PERSISTENT_VOLUMES, pv["metadata"]["name"], {"spec": {"capacity": {"storage": "2Gi"}}})
    await set_status(
        kube,
        {
            "allocatedResources": {"storage": "2Gi"},
            "allocatedResourceStatuses": {"storage": "NodeResizePending"},
            "conditions": [condition("FileSystemResizePending", "Waiting for user to (re-)start a pod")],
        },
    )
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Waiting for the node: the controller side is done (the PV has 2Gi); kubelet finishes the file "
        "system expansion when a pod uses the volume (start or restart one)."
    )


async def test_last_failure_from_events(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    pvc, _ = await bound_claim(kube, driver)
    await request(kube, "2Gi")
    await kube.create(
        EVENTS,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "data.1", "namespace": "default"},
            "involvedObject": object_reference({**pvc, "apiVersion": "v1", "kind": "PersistentVolumeClaim"}),
            "type": WARNING,
            "reason": "VolumeResizeFailed",
            "message": "resize volume failed: rpc error: code = Internal desc = disk on fire",
            "count": 3,
            "source": {"component": "external-resizer hostpath.csi.k8s.io"},
        },
    )
    report = await explained(kubeconfig, driver.address)
    assert any(
        f.startswith("Event Warning VolumeResizeFailed (") and f.endswith("disk on fire") and "3 times" in f
        for f in report.facts
    )


@pytest.mark.parametrize(
    "driver_config", [replace(DriverConfig(), controller_capabilities=NO_CONTROLLER_EXPAND)]
)
async def test_node_only_driver(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await bound_claim(kube, driver)
    await request(kube, "2Gi")
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Would expand the volume from 1Gi to 2Gi (record 2Gi and leave the expansion to kubelet on the node)."
    )


@pytest.mark.parametrize(
    "driver_config",
    [
        replace(
            DriverConfig(),
            controller_capabilities=NO_CONTROLLER_EXPAND - {"MODIFY_VOLUME"},
            node_capabilities=DEFAULT_NODE_CAPABILITIES - {"EXPAND_VOLUME"},
        )
    ],
)
async def test_driver_that_cannot_expand(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await bound_claim(kube, driver)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith(
        "Waiting: csi-resizer does not start with this driver: it supports neither"
    )


async def test_driver_without_controller_service(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await bound_claim(kube, driver)
    driver.config = replace(driver.config, controller_service=False)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Waiting: csi-resizer does not start with this driver: CSI driver does not support controller "
        "service."
    )


@pytest.mark.parametrize("driver_config", [replace(DriverConfig(), volume_expansion="OFFLINE")])
async def test_offline_driver_and_pods_using_the_claim(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await bound_claim(kube, driver)
    await request(kube, "2Gi")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }
    await kube.create(PODS, pod)
    report = await explained(kubeconfig, driver.address)
    assert "Pods using it: app." in report.facts
    assert any(f.startswith("The driver expands only offline") for f in report.facts)


async def test_unreachable_driver(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await bound_claim(kube, driver)
    report = await explained(kubeconfig, driver.address.replace("csi.sock", "gone.sock"))
    assert report.verdict.startswith("Waiting: csi-resizer cannot reach its CSI driver at ")


async def test_the_real_entrypoint_prints_the_explanation(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await bound_claim(kube, driver)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecars.resizer", "explain", "pvc", "default/data",
        "--kubeconfig", kubeconfig, f"--csi-address={driver.address}",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:2] == [
        f"PersistentVolumeClaim default/data (csi-resizer for {DRIVER})",
        "  Nothing to do: no resize needed (it requests 1Gi and has 1Gi).",
    ]
