"""Leader election against the test bed: one leader, takeover after SIGKILL and at once after SIGTERM."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kit import ROOT, eventually

from common.backoff import TokenBucket
from common.errors import ConfigError
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.kube.events import EventRecorder
from common.kube.resources import EVENTS, LEASES
from common.leaderelection import LeaderElectionConfig, LeaderElector, LeadershipLost, sanitize_name
from testbed.apiserver import ApiServer

CHILD = Path(__file__).with_name("leader_child.py")
LEASE = "test-lock"
FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.3}


def test_lease_names_as_csi_lib_utils_sanitizes_them() -> None:
    driver = "hostpath.csi.k8s.io"
    assert sanitize_name(driver.replace("/", "-")) == "hostpath-csi-k8s-io"  # provisioner
    assert (
        sanitize_name("external-attacher-leader-" + driver) == "external-attacher-leader-hostpath-csi-k8s-io"
    )
    assert (
        sanitize_name("external-resizer-" + sanitize_name(driver)) == "external-resizer-hostpath-csi-k8s-io"
    )
    assert sanitize_name("weird/driver_") == "weird-driver-X"


def test_durations_are_checked_up_front() -> None:
    with pytest.raises(ConfigError):
        LeaderElectionConfig(lock_name="x", namespace="d", lease_duration=10, renew_deadline=10)
    with pytest.raises(ConfigError):
        LeaderElectionConfig(lock_name="x", namespace="d", renew_deadline=5, retry_period=5)


async def client_for(kubeconfig: str, agent: str) -> KubeClient:
    return KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig), limiter=TokenBucket(math.inf, 1), user_agent=agent
    )


async def holder(kube: KubeClient) -> str:
    lease = await kube.get(LEASES, LEASE, namespace="default")
    return str(lease["spec"].get("holderIdentity") or "")


async def test_one_leader_writes_a_golden_shaped_lease_and_event(kubeconfig: str, kube: KubeClient) -> None:
    clients = [await client_for(kubeconfig, f"le-{i}") for i in range(2)]
    leading: list[str] = []
    recorder = EventRecorder(clients[0], component="test/lock/a")
    electors = [
        LeaderElector(
            clients[i],
            LeaderElectionConfig(lock_name="test/lock", namespace="default", identity=name, **FAST),
            recorder=recorder if i == 0 else None,
        )
        for i, name in enumerate(("a", "b"))
    ]

    async def lead(name: str) -> None:
        leading.append(name)
        await asyncio.Event().wait()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    e.run(lambda n=e.config.identity: lead(n)), name=f"elector {e.config.identity}"
                )
                for e in electors
            ]
            await eventually(lambda: leading, timeout=5, message="a leader")
            await asyncio.sleep(1.0)  # several retry periods: still exactly one leader
            assert len(leading) == 1
            assert sum(e.leading for e in electors) == 1
            lease = await kube.get(LEASES, LEASE, namespace="default")
            spec = lease["spec"]
            assert spec["holderIdentity"] == leading[0]
            assert spec["leaseDurationSeconds"] == 2
            assert spec["leaseTransitions"] == 0
            assert spec["renewTime"].endswith("Z") and len(spec["acquireTime"]) == len(
                "2026-11-22T23:54:42.249400Z"
            )
            for task in tasks:
                task.cancel()
        await recorder.flush()
        if leading[0] == "a":
            events = await kube.list(EVENTS, namespace="default")
            became = [e for e in events["items"] if e["reason"] == "LeaderElection"]
            assert became[0]["message"] == "a became leader"
            assert became[0]["involvedObject"]["kind"] == "Lease"
            assert became[0]["source"] == {"component": "test/lock/a"}
    finally:
        for client in clients:
            await client.close()


async def test_release_on_cancel_empties_the_holder(kubeconfig: str, kube: KubeClient) -> None:
    client = await client_for(kubeconfig, "le-release")
    elector = LeaderElector(
        client, LeaderElectionConfig(lock_name="test/lock", namespace="default", identity="solo", **FAST)
    )
    started = asyncio.Event()

    async def lead() -> None:
        started.set()
        await asyncio.Event().wait()

    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(elector.run(lead), name="elector solo")
            await asyncio.wait_for(started.wait(), 5)
            assert await holder(kube) == "solo"
            task.cancel()
        assert await holder(kube) == ""
    finally:
        await client.close()


async def test_losing_the_lease_stops_the_work_and_raises(
    kubeconfig: str, kube: KubeClient, apiserver: ApiServer
) -> None:
    client = await client_for(kubeconfig, "le-lose")
    elector = LeaderElector(
        client, LeaderElectionConfig(lock_name="test/lock", namespace="default", identity="loser", **FAST)
    )
    stopped = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async def break_renewals() -> None:
        await eventually(lambda: elector.leading, timeout=5)
        apiserver.faults.fail(1000, status=500, resource="leases")  # renewals now fail

    try:
        breaker = asyncio.ensure_future(break_renewals())
        with pytest.raises(LeadershipLost):
            async with asyncio.timeout(10):
                await elector.run(lead)
        await breaker
        assert stopped.is_set()
        assert not elector.leading
    finally:
        await client.close()


async def test_healthz_fails_only_for_a_leader_that_stopped_renewing(kubeconfig: str) -> None:
    client = await client_for(kubeconfig, "le-health")
    elector = LeaderElector(
        client, LeaderElectionConfig(lock_name="test/lock", namespace="default", identity="h", **FAST)
    )
    try:
        assert await elector.healthz() == (200, "ok")  # not leading
        assert await elector._try_acquire_or_renew()
        elector.leading = True
        assert await elector.healthz() == (200, "ok")
        elector._observed_at -= 2.0 + 20.0 + 1
        status, body = await elector.healthz()
        assert status == 500
        assert body == "internal server error: failed election to renew leadership on lease test-lock"
    finally:
        await client.close()


def start_child(kubeconfig: str, identity: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), kubeconfig, identity],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


async def read_leading(proc: subprocess.Popen[str], timeout: float) -> float:
    """Wait for the child to print `leading`; returns the monotonic time it did."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert line.startswith("leading"), line
    return time.monotonic()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_standby_takes_over_from_a_process(kubeconfig: str, kube: KubeClient, how: str) -> None:
    """Two processes contend; after SIGKILL the standby leads within lease duration + retry period,
    after SIGTERM (lease released) at once."""
    first = start_child(kubeconfig, "first")
    procs: list[subprocess.Popen[Any]] = [first]
    try:
        await read_leading(first, 10)
        second = start_child(kubeconfig, "second")
        procs.append(second)
        await asyncio.sleep(1.0)  # the standby has observed the lease
        assert await holder(kube) == "first"
        stopped_at = time.monotonic()
        if how == "SIGKILL":
            first.kill()
        else:
            first.terminate()
        took_over_at = await read_leading(second, 10)
        delay = took_over_at - stopped_at
        if how == "SIGKILL":
            assert delay <= FAST["lease_duration"] + FAST["retry_period"] + 1.0, delay
        else:
            assert delay <= FAST["retry_period"] + 0.8, delay
            assert first.wait(5) == 0
        assert await holder(kube) == "second"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
