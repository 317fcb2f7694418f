"""csi-provisioner and bad input: a ProvisioningFailed event naming the cause, backoff, no crash, no leak.

One sidecar serves claims whose StorageClass the driver rejects (InvalidArgument: slow retry), whose
secret is missing or forbidden, which ask for an impossible size, or whose class has an unknown
`csi.storage.k8s.io/` key — next to a good claim that is provisioned meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import grpc
from kit import eventually
from provisioner_fixtures import PREFIX, Bed, provisioner_bed, secret, stop_cleanly, storage_class

from testbed.apiserver import ApiServer
from testbed.csidriver import DriverConfig, TestDriver


def calls_for(driver: TestDriver, tier: str) -> int:
    return sum(1 for c in driver.calls.of("CreateVolume") if c.request.parameters.get("tier") == tier)


async def add_class(bed: Bed, name: str, **params: str) -> None:
    await bed.store.create("storageclasses", storage_class(name, parameters={"tier": name, **params}))


async def test_bad_input_is_reported_and_retried_with_backoff(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        driver.faults.add(
            "CreateVolume",
            "error",
            code=grpc.StatusCode.INVALID_ARGUMENT,
            message="tier rejected is not supported",
            match={"parameters.tier": "rejected"},
        )
        secret_keys = (PREFIX + "provisioner-secret-name", PREFIX + "provisioner-secret-namespace")
        await add_class(bed, "rejected")
        await add_class(bed, "missing", **dict(zip(secret_keys, ("absent", "default"), strict=True)))
        await add_class(bed, "forbidden", **dict(zip(secret_keys, ("locked", "default"), strict=True)))
        await add_class(bed, "huge")
        await add_class(bed, "unknown", **{PREFIX + "bogus": "x"})
        await bed.store.create("secrets", secret("locked"), namespace="default")
        apiserver.faults.fail(3, status=403, verb="get", resource="secrets", name="locked")
        process = bed.start(
            "--retry-interval-start=100ms",
            "--retry-interval-max=4s",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        for name in ("rejected", "missing", "forbidden", "unknown"):
            await bed.create_claim(name, sc=name)
        await bed.create_claim("huge", sc="huge", size="1Pi")
        await bed.create_claim("good")

        infeasible = await bed.wait_event("rejected", "ProvisioningFailed")
        assert infeasible["message"] == (
            "Volume provisioning failed with infeasible error. Retries will be delayed. "
            "rpc error: code = InvalidArgument desc = tier rejected is not supported"
        )
        # An infeasible claim is retried only after --retry-interval-max, not with the per-claim backoff.
        assert calls_for(driver, "rejected") == 1
        await asyncio.sleep(1.5)
        assert calls_for(driver, "rejected") == 1
        missing = await bed.wait_event("missing", "ProvisioningFailed")
        assert (
            missing["message"]
            == 'error getting secret absent in namespace default: secrets "absent" not found'
        )
        forbidden = await bed.wait_event("forbidden", "ProvisioningFailed")
        assert forbidden["message"].startswith("error getting secret locked in namespace default: ")
        huge = await bed.wait_event("huge", "ProvisioningFailed")
        assert huge["message"].startswith(
            "rpc error: code = OutOfRange desc = requested capacity 1125899906842624"
        )
        unknown = await bed.wait_event("unknown", "ProvisioningFailed")
        assert unknown["message"] == (
            "failed to strip CSI Parameters of prefixed keys: found unknown parameter key "
            '"csi.storage.k8s.io/bogus" with reserved namespace csi.storage.k8s.io/'
        )
        await bed.wait_bound("good")
        await bed.wait_bound("forbidden")  # the API stopped refusing: retried into success

        await eventually(lambda: calls_for(driver, "rejected") == 2, timeout=6, message="the slow retry")
        # An ordinary failure doubles its delay from 100 ms: n tries take at least 0.1 * (2**(n-1) - 1) s.
        elapsed = loop.time() - started
        assert 2 <= calls_for(driver, "huge") <= 2 + math.log2(elapsed / 0.1 + 1)
        events = await bed.events("huge", "ProvisioningFailed")
        assert len(events) == 1 and events[0]["count"] >= 2  # one Event, counted up

        # The secret appears: the claim that waited for it is provisioned.
        await bed.store.create("secrets", secret("absent"), namespace="default")
        await bed.wait_bound("missing")
        assert process.running()
        bound = {p["spec"]["claimRef"]["name"] for p in await bed.pvs()}
        assert bound == {"good", "forbidden", "missing"}
        assert sorted(v.name for v in driver.volumes.values()) == sorted(
            p["metadata"]["name"] for p in await bed.pvs()
        )
        await stop_cleanly(process)


async def test_a_driver_that_cannot_create_volumes_is_refused_at_start(
    apiserver: ApiServer, sidecar: Any, socket_dir: Path
) -> None:
    no_create = TestDriver(DriverConfig(controller_capabilities=frozenset({"PUBLISH_UNPUBLISH_VOLUME"})))
    async with no_create.serve(f"unix://{socket_dir}/nocreate.sock"):
        process = sidecar(
            "sidecars.provisioner",
            f"--kubeconfig={apiserver.kubeconfig}",
            f"--csi-address=unix://{socket_dir}/nocreate.sock",
        )
        assert await process.wait(20) == 1
    assert (
        "csi-provisioner: CSI driver does not support dynamic provisioning: controller CREATE_DELETE_VOLUME "
        "capability is not reported"
    ) in process.log()
