"""csi-controller-sidecars next to a single sidecar during a rollout: one Lease each, no double work.

A standalone csi-attacher (ours, standing in for the Go container of the old pod) holds
`external-attacher-leader-<driver>`; the combined process then takes the provisioner's and the
resizer's Leases and keeps its attacher on standby, so the old attacher attaches. When the old pod
goes (SIGTERM, its Lease released), the combined process's attacher takes over and attaches the next
volume. SIGTERM then releases all three Leases. With `--once`, no Lease is taken: one pass of all
three controllers, then exit 0.
"""

from __future__ import annotations

from typing import Any

from combined_fixtures import (
    ELECTION,
    LEASES_BY_CONTROLLER,
    claim,
    combined_args,
    holders,
    metrics,
    plane,
    pod,
    sample,
    stop_cleanly,
    storage_class,
    wait_attached,
    wait_bound,
    wait_pv_capacity,
)
from kit import eventually, free_port

from common.kube.client import KubeClient
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS
from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

ATTACHER_LEASE = LEASES_BY_CONTROLLER["attacher"]
WORKED = 'workqueue_work_duration_seconds_count{name="csi-attacher-va"}'


async def test_attacher_stays_standby_while_a_single_attacher_leads(
    apiserver: ApiServer, kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    port = free_port()
    async with plane(apiserver, driver):
        old = sidecar(
            "sidecars.attacher",
            f"--kubeconfig={kubeconfig}",
            f"--csi-address={driver.address}",
            "--v=5",
            *ELECTION,
            env={"POD_NAME": "old-pod"},
        )

        async def old_leads() -> bool:
            return (await holders(kube))["attacher"] == "old-pod"

        await eventually(old_leads, timeout=20, message="the single attacher leads")
        combined = sidecar(
            "sidecars.combined",
            *combined_args(kubeconfig, driver, port, *ELECTION),
            env={"POD_NAME": "new-pod"},
        )
        expected = {"provisioner": "new-pod", "attacher": "old-pod", "resizer": "new-pod"}

        async def shared_out() -> bool:
            return await holders(kube) == expected

        await eventually(
            shared_out, timeout=20, message="provisioner and resizer Leases taken, attacher's not"
        )

        await storage_class(kube)
        await claim(kube, "first")
        first = (await wait_bound(kube, "first"))["spec"]["volumeName"]
        await pod(kube, "one", "first")
        await wait_attached(kube, first)
        await kube.patch(
            PERSISTENT_VOLUME_CLAIMS,
            "first",
            {"spec": {"resources": {"requests": {"storage": "3Gi"}}}},
            namespace="default",
        )
        await wait_pv_capacity(kube, first, "3Gi")
        text = await metrics(port)
        # A standby reports nothing for its Lease yet (client-go sets the series when it first leads).
        assert sample(text, f'leader_election_master_status{{name="{ATTACHER_LEASE}"}}') is None
        for controller in ("provisioner", "resizer"):
            lease = LEASES_BY_CONTROLLER[controller]
            assert sample(text, f'leader_election_master_status{{name="{lease}"}}') == 1.0
        assert not sample(text, WORKED), "the standby attacher synced a VolumeAttachment"
        assert await holders(kube) == expected

        await stop_cleanly(old)

        async def taken_over() -> bool:
            return (await holders(kube))["attacher"] == "new-pod"

        await eventually(taken_over, timeout=20, message="the combined attacher takes the released Lease")
        await claim(kube, "second")
        second = (await wait_bound(kube, "second"))["spec"]["volumeName"]
        await pod(kube, "two", "second")
        await wait_attached(kube, second)
        text = await metrics(port)
        assert sample(text, f'leader_election_master_status{{name="{ATTACHER_LEASE}"}}') == 1.0
        assert (sample(text, WORKED) or 0) > 0

        await stop_cleanly(combined)
    assert await holders(kube) == dict.fromkeys(LEASES_BY_CONTROLLER, "")


async def test_once_reconciles_every_controller_then_exits(
    apiserver: ApiServer, kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    """`--once` (no Lease taken): one pass of all three controllers over what is there, then exit 0."""
    async with plane(apiserver, driver):
        await storage_class(kube)
        await claim(kube, "waiting")
        process = sidecar(
            "sidecars.combined", *combined_args(kubeconfig, driver, free_port(), "--once", *ELECTION)
        )
        assert await process.wait(timeout=30) == 0, process.log()[-3000:]
        await wait_bound(kube, "waiting")
        assert len(driver.volumes) == 1
        assert await holders(kube) == dict.fromkeys(LEASES_BY_CONTROLLER, "")
