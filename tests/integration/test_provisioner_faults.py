"""csi-provisioner under faults: timeouts, lost answers, driver crashes, API 409s, kill -9.

The real entrypoint against the test bed; every test ends with the driver holding exactly the
volumes of the bound claims (none leaked, none doubled) and the sidecar exiting 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from kit import eventually
from provisioner_fixtures import INTENT, Bed, provisioner_bed, stop_cleanly

from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver


async def test_timeout_then_success_creates_one_volume(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add("CreateVolume", "succeed_then_timeout", count=1)  # created, answer lost
        process = bed.start("--timeout=500ms")
        await bed.create_claim("slow")
        pvc = await bed.wait_bound("slow")
        calls = driver.calls.of("CreateVolume")
        assert [c.request.name for c in calls] == [pvc["spec"]["volumeName"]] * 2
        assert calls[0].fault == "succeed_then_timeout" and calls[1].ok
        assert len(driver.volumes) == 1
        failed = await bed.wait_event("slow", "ProvisioningFailed")
        assert failed["message"].startswith("rpc error: code = DeadlineExceeded desc = ")
        await bed.wait_event("slow", "ProvisioningSucceeded")
        await stop_cleanly(process)


@pytest.mark.parametrize("intent", [True, False], ids=["intent", "no-intent"])
async def test_volume_created_but_answer_lost_then_claim_deleted_leaks_nothing(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any, intent: bool
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add("CreateVolume", "succeed_then_timeout", count=2)
        process = bed.start("--timeout=300ms", f"--persist-provisioning-intent={str(intent).lower()}")
        await bed.create_claim("gone")
        await driver.calls.wait_for("CreateVolume", 1, finished=True)
        assert len(driver.volumes) == 1
        await bed.delete_claim("gone")
        await bed.wait_gone("persistentvolumeclaims", "gone", "default")
        await bed.wait_no_volumes()
        await eventually(lambda: _no_pvs(bed), message="no PV left")
        await stop_cleanly(process)


async def _no_pvs(bed: Bed) -> bool:
    return not await bed.pvs()


async def test_driver_restart_mid_provision(apiserver: ApiServer, driver: TestDriver, sidecar: Any) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add("CreateVolume", "delay", delay=1.0, count=1)
        process = bed.start()
        await bed.create_claim("restart")
        await driver.calls.wait_for("CreateVolume", 1)
        await driver.crash(restart_after=0.3)  # the held call fails, the socket goes away and comes back
        pvc = await bed.wait_bound("restart")
        assert [v.name for v in driver.volumes.values()] == [pvc["spec"]["volumeName"]]
        assert driver.crashes == 1 and process.running()
        await stop_cleanly(process)


async def test_api_conflicts_on_pv_create_are_retried(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        rule = apiserver.faults.fail(3, status=409, verb="create", resource="persistentvolumes")
        process = bed.start()
        await bed.create_claim("conflicted")
        pvc = await bed.wait_bound("conflicted")
        assert rule.remaining == 0
        assert (
            len(driver.volumes) == 1 and len(driver.calls.of("CreateVolume")) == 1
        )  # saved, not re-provisioned
        assert apiserver.requests.count(verb="create", resource="persistentvolumes") == 4
        assert INTENT not in pvc["metadata"].get("finalizers", [])
        await stop_cleanly(process)


async def test_kill_9_while_the_driver_holds_create_volume_then_claim_deleted(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add("CreateVolume", "succeed_then_timeout", count=1)  # created, never answered
        first = bed.start("--timeout=60s")
        await bed.create_claim("orphan")
        await driver.calls.wait_for("CreateVolume", 1)
        await eventually(lambda: len(driver.volumes) == 1, message="the volume exists on the backend")
        await first.kill()
        await bed.delete_claim("orphan")

        async def held_by_the_intent_only() -> bool:
            pvc = await bed.get("persistentvolumeclaims", "orphan", "default")
            meta = (pvc or {}).get("metadata") or {}
            return bool(meta.get("deletionTimestamp")) and meta.get("finalizers") == [INTENT]

        await eventually(held_by_the_intent_only, message="the deleted claim held by the intent")
        second = bed.start()
        await bed.wait_gone("persistentvolumeclaims", "orphan", "default")
        await bed.wait_no_volumes()
        assert not await bed.pvs()
        [delete] = driver.calls.of("DeleteVolume")
        assert delete.ok
        await stop_cleanly(second)


async def test_unavailable_driver_call_is_retried_with_the_same_name(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add(
            "CreateVolume", "error", code=grpc.StatusCode.ABORTED, message="operation pending", count=2
        )
        process = bed.start()
        await bed.create_claim("busy")
        pvc = await bed.wait_bound("busy")
        assert {c.request.name for c in driver.calls.of("CreateVolume")} == {pvc["spec"]["volumeName"]}
        assert len(driver.calls.of("CreateVolume")) == 3 and len(driver.volumes) == 1
        await asyncio.sleep(0)
        await stop_cleanly(process)


async def test_claim_and_class_deleted_together_while_failing_leak_nothing_and_strand_nothing(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    """A claim whose CreateVolume keeps timing out (the volume may exist) is deleted together with
    its StorageClass: the provisioner still looks the volume up with the class it last saw, deletes
    it, and lets the claim go (no Terminating claim held by our intent finalizer)."""
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add("CreateVolume", "succeed_then_timeout", count=3)
        process = bed.start("--timeout=300ms")
        await bed.create_claim("doomed")
        await driver.calls.wait_for("CreateVolume", 1, finished=True)
        assert len(driver.volumes) == 1
        claim = await bed.get("persistentvolumeclaims", "doomed", "default")
        assert claim is not None and INTENT in claim["metadata"]["finalizers"]
        await bed.delete_claim("doomed")
        await apiserver.store.delete("storageclasses", claim["spec"]["storageClassName"])
        await bed.wait_gone("persistentvolumeclaims", "doomed", "default")
        await bed.wait_no_volumes()
        await stop_cleanly(process)
