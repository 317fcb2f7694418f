"""csi-attacher when things go wrong around it: driver restart, lost attachments, failover, finalizer races.

Real `python -m sidecars.attacher` processes against the test bed, as in test_attacher_flows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from attacher_fixtures import (
    FINALIZER,
    LEASE,
    add_volume,
    attached,
    create_node,
    create_pv,
    create_va,
    start_attacher,
    stop_cleanly,
    wait_va,
)
from kit import eventually

from common.kube.client import KubeClient
from common.kube.finalizers import add_finalizer
from common.kube.resources import LEASES, PERSISTENT_VOLUMES
from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

PROVISIONER_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"


async def test_driver_restart_is_survived_and_pending_work_resumes(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    add_volume(driver, "vol-1")
    add_volume(driver, "vol-2")
    await create_node(kube)
    await create_pv(kube, "pv-1", handle="vol-1")
    await create_pv(kube, "pv-2", handle="vol-2")
    process = start_attacher(sidecar, kubeconfig, driver, "--retry-interval-max=5s")
    await create_va(kube, "va-1", pv="pv-1")
    await wait_va(kube, "va-1", attached)

    await driver.crash(restart_after=1.0)
    await create_va(kube, "va-2", pv="pv-2")  # while the driver is down
    failed = await wait_va(kube, "va-2", lambda obj: "attachError" in obj["status"])
    assert "Unavailable" in failed["status"]["attachError"]["message"]
    va = await wait_va(kube, "va-2", attached, timeout=20)
    assert "attachError" not in va["status"]
    assert driver.starts == 2 and sorted(driver.publications) == ["vol-1", "vol-2"]
    assert process.running()  # upstream exits on a lost connection; we reconnect
    assert "reconnected to CSI driver" in process.log()
    await stop_cleanly(process)


async def test_reconcile_reattaches_what_the_driver_lost(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    add_volume(driver, "vol-1")
    await create_node(kube)
    await create_pv(kube, handle="vol-1")
    process = start_attacher(sidecar, kubeconfig, driver, "--reconcile-sync=300ms")
    await create_va(kube)
    await wait_va(kube, "golden-va", attached)
    assert driver.calls.counts["ControllerPublishVolume"] == 1

    driver.volumes["vol-1"].attachments.clear()  # the backend dropped the attachment
    await eventually(lambda: driver.publications.get("vol-1") == ["node-1"], message="re-published")
    assert driver.calls.counts["ControllerPublishVolume"] == 2
    assert driver.calls.counts["ListVolumes"] >= 2
    assert "do not match, forcing a sync" in process.log()
    await stop_cleanly(process)


async def test_leader_failover(kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any) -> None:
    add_volume(driver, "vol-1")
    add_volume(driver, "vol-2")
    await create_node(kube)
    await create_pv(kube, "pv-1", handle="vol-1")
    await create_pv(kube, "pv-2", handle="vol-2")
    election = (
        "--leader-election",
        "--leader-election-namespace=default",
        "--leader-election-lease-duration=2s",
        "--leader-election-renew-deadline=1s",
        "--leader-election-retry-period=200ms",
    )
    replicas = {
        name: start_attacher(sidecar, kubeconfig, driver, *election, env={"POD_NAME": name})
        for name in ("attacher-a", "attacher-b")
    }

    async def holder() -> str:
        lease = await kube.get(LEASES, LEASE, namespace="default")
        return str(lease["spec"].get("holderIdentity") or "")

    leader = await eventually(holder, timeout=15, message="a leader")
    await create_va(kube, "va-1", pv="pv-1")
    await wait_va(kube, "va-1", attached)

    await replicas[leader].kill()  # SIGKILL: no lease release
    survivor = next(name for name in replicas if name != leader)
    await create_va(kube, "va-2", pv="pv-2")
    await eventually(lambda: _held_by(kube, survivor), timeout=15, message="failover")
    await wait_va(kube, "va-2", attached, timeout=15)
    assert "successfully acquired lease" in replicas[survivor].log()
    await stop_cleanly(replicas[survivor])
    assert await holder() == ""  # released on SIGTERM


async def _held_by(kube: KubeClient, name: str) -> bool:
    lease = await kube.get(LEASES, LEASE, namespace="default")
    return lease["spec"].get("holderIdentity") == name


async def test_provisioner_and_attacher_patch_the_same_pv_concurrently(
    apiserver: ApiServer, kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    """external-provisioner#1217: both sidecars change PV finalizers from stale copies; none is lost.

    The provisioner's side is `common.kube.finalizers.add_finalizer`, the code csi-provisioner uses,
    always from the PV as first read. For the first ten PVs it patches after the attacher's finalizer
    landed (so its copy is certainly stale); for the other ten both run at once.
    """
    count = 20
    await create_node(kube)
    stale: dict[str, dict[str, Any]] = {}
    for i in range(count):
        add_volume(driver, f"vol-{i}")
        await create_pv(kube, f"pv-{i}", handle=f"vol-{i}")
        only_protection = {"metadata": {"finalizers": ["kubernetes.io/pv-protection"]}}
        stale[f"pv-{i}"] = await kube.patch(PERSISTENT_VOLUMES, f"pv-{i}", only_protection)
    process = start_attacher(sidecar, kubeconfig, driver)

    async def provisioner(name: str) -> None:
        await add_finalizer(kube, PERSISTENT_VOLUMES, stale[name], PROVISIONER_FINALIZER)

    for i in range(count // 2):
        await create_va(kube, f"va-{i}", pv=f"pv-{i}")
        await wait_va(kube, f"va-{i}", attached)
        await provisioner(f"pv-{i}")
    await asyncio.gather(
        *(create_va(kube, f"va-{i}", pv=f"pv-{i}") for i in range(count // 2, count)),
        *(provisioner(f"pv-{i}") for i in range(count // 2, count)),
    )
    for i in range(count):
        await wait_va(kube, f"va-{i}", attached)
        pv = await kube.get(PERSISTENT_VOLUMES, f"pv-{i}")
        finalizers = pv["metadata"]["finalizers"]
        assert sorted(finalizers) == sorted(["kubernetes.io/pv-protection", PROVISIONER_FINALIZER, FINALIZER])
    refused = [
        r
        for r in apiserver.requests.records()
        if (r.verb, r.resource, r.code) == ("patch", "persistentvolumes", 422)
    ]
    assert len(refused) >= count // 2  # the stale patches were refused by their `test`, then redone

    # the control: a merge patch from the stale copy, as before the fix, loses the attacher's finalizer
    old = stale["pv-0"]["metadata"]["finalizers"]
    await kube.patch(PERSISTENT_VOLUMES, "pv-0", {"metadata": {"finalizers": [*old, PROVISIONER_FINALIZER]}})
    pv = await kube.get(PERSISTENT_VOLUMES, "pv-0")
    assert FINALIZER not in pv["metadata"]["finalizers"]
    await stop_cleanly(process)
