"""csi-provisioner with two replicas: the standby takes over after kill -9, nothing is provisioned twice."""

from __future__ import annotations

from typing import Any

from kit import eventually
from provisioner_fixtures import provisioner_bed, stop_cleanly

from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver


async def test_leader_failover_with_two_replicas(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        election = (
            "--leader-election",
            "--leader-election-namespace=default",
            "--leader-election-lease-duration=2s",
            "--leader-election-renew-deadline=1500ms",
            "--leader-election-retry-period=500ms",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        )
        replicas = {name: bed.start(*election, env={"POD_NAME": name}) for name in ("replica-a", "replica-b")}

        async def holder() -> str | None:
            lease = await bed.get("leases", "hostpath-csi-k8s-io", "default")
            return (lease or {}).get("spec", {}).get("holderIdentity") or None

        leader = await eventually(holder, message="a leader")
        for i in range(10):
            await bed.create_claim(f"c-{i}")
        await eventually(lambda: len(driver.volumes) >= 3, message="some volumes")
        await replicas[leader].kill()
        for i in range(10, 20):
            await bed.create_claim(f"c-{i}")
        for i in range(20):
            await bed.wait_bound(f"c-{i}", timeout=30)
        standby = next(name for name in replicas if name != leader)
        assert await holder() == standby
        names = [v.name for v in driver.volumes.values()]
        assert len(names) == len(set(names)) == 20  # no volume provisioned twice
        assert len(await bed.pvs()) == 20
        await stop_cleanly(replicas[standby])
