"""Bad input end to end: the real sidecar processes on the process test bed, with fuzzed StorageClasses
and claims, and with a driver that keeps failing.

* A few hypothesis examples of StorageClass parameters (odd keys and values, secret templates that
  resolve or not, secrets that exist or not) and claim sizes: every claim ends Bound or with a
  `ProvisioningFailed` event whose text is readable; after all are deleted no volume is left in the
  driver and no sidecar exited.
* A driver failing CreateVolume, ControllerPublishVolume and ControllerExpandVolume on every call:
  each is retried with growing back-off (`--retry-interval-start=500ms`, max 5s), never in a burst,
  and each object says why (event, `attachError`).

One test bed serves the module (started once; sidecars as in `make chaos`, one replica each).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.kube.resources import (
    CSI_NODES,
    EVENTS,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    SECRETS,
    STORAGE_CLASSES,
    VOLUME_ATTACHMENTS,
)
from testbed.chaos.churn import claim_manifest, pod_manifest
from testbed.chaos.clients import Api, Control
from testbed.chaos.fleet import SOAK_FLAGS
from testbed.demo import free_port, hostpath_args
from testbed.launch import DRIVER_NAME, NODE, Cluster

Obj = dict[str, Any]
NAMESPACE = "default"
SECRET_VALUE = "fuzz-e2e-secret-value"


def start_sidecars(cluster: Cluster) -> None:
    args = hostpath_args(cluster.socket)
    for module in ("provisioner", "attacher", "resizer"):
        flags = [a for a in args[module] if not a.startswith(("-v=", "--v="))]
        extra = [f"--kubeconfig={cluster.kubeconfig}", f"--http-endpoint=127.0.0.1:{free_port()}", "--v=4"]
        cluster.sidecar(
            f"csi-{module}", module, [*flags, *SOAK_FLAGS, *extra], env={"POD_NAME": f"{module}-0"}
        )
    registrar = [a for a in args["registrar"] if not a.startswith(("-v=", "--v="))]
    cluster.sidecar(
        "csi-registrar", "registrar", [*registrar, f"--plugin-registration-path={cluster.registration_dir}"]
    )


@pytest.fixture(scope="module")
def bed() -> Iterator[Cluster]:
    cluster = Cluster()

    async def start() -> None:
        await cluster.start_testbed()
        start_sidecars(cluster)
        api = await Api.connect(str(cluster.kubeconfig))
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                node = await api.get(CSI_NODES, NODE)
                if any(
                    d["name"] == DRIVER_NAME for d in ((node or {}).get("spec") or {}).get("drivers") or []
                ):
                    break
                await asyncio.sleep(0.1)
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "present", "namespace": NAMESPACE},
                "data": {"key": base64.b64encode(SECRET_VALUE.encode()).decode()},
            }
            await api.create(SECRETS, secret)
        finally:
            await api.close()

    asyncio.run(start())
    try:
        yield cluster
    finally:
        asyncio.run(cluster.stop())


async def until(probe: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def events_for(api: Api, kind: str, name: str) -> list[Obj]:
    return [
        e
        for e in await api.items(EVENTS, NAMESPACE)
        if e["involvedObject"].get("kind") == kind and e["involvedObject"].get("name") == name
    ]


def storage_class(name: str, parameters: dict[str, str], *, binding: str = "Immediate") -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER_NAME,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": True,
        "parameters": parameters,
    }


def readable(text: str) -> bool:
    return bool(text.strip()) and "Traceback" not in text and "object at 0x" not in text


# --- fuzzed StorageClasses and claims --------------------------------------------------------------

SECRET_TEMPLATES = ["present", "absent", "${pvc.name}", "${pvc.annotations['x']}", "bad name", "${unknown}"]
ODD_KEYS = ["type", "tier", "csi.storage.k8s.io/fstype", "csi.storage.k8s.io/nonsense", "ünïcode", "x" * 80]
NAMESPACES = ["default", "${pvc.namespace}", "nope-ns", "Bad_NS"]
PREFIX = "csi.storage.k8s.io/provisioner-secret-"
parameters = st.dictionaries(st.sampled_from(ODD_KEYS), st.text(max_size=12), max_size=3) | st.tuples(
    st.sampled_from(SECRET_TEMPLATES), st.sampled_from(NAMESPACES)
).map(lambda t: {PREFIX + "name": t[0], PREFIX + "namespace": t[1]})
sizes = st.sampled_from(["1", "1Ki", "1.5Gi", "64Mi", "100Gi", "1000Ti", "999999999"])
counter = iter(range(10_000))


@pytest.mark.timeout(240)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=parameters, size=sizes)
async def test_fuzzed_classes_and_claims_end_bound_or_explained(
    bed: Cluster, params: dict[str, str], size: str
) -> None:
    n = next(counter)
    api = await Api.connect(str(bed.kubeconfig))
    control = Control(bed.control_plane["url"], bed.driver_control)
    try:
        await api.create(STORAGE_CLASSES, storage_class(f"fz-{n}", params))
        body = claim_manifest(f"fz-{n}", "Immediate", 1)
        body["spec"]["storageClassName"] = f"fz-{n}"
        body["spec"]["resources"]["requests"]["storage"] = size
        await api.create(PERSISTENT_VOLUME_CLAIMS, body)

        async def settled() -> str:
            claim = await api.get(PERSISTENT_VOLUME_CLAIMS, f"fz-{n}", NAMESPACE)
            if ((claim or {}).get("status") or {}).get("phase") == "Bound":
                return "bound"
            failed = [
                e
                for e in await events_for(api, "PersistentVolumeClaim", f"fz-{n}")
                if e["reason"] == "ProvisioningFailed"
            ]
            return failed[0]["message"] if failed else ""

        outcome = await until(settled, 15, f"claim fz-{n} ({params}, {size}) bound or failed")
        assert outcome == "bound" or readable(outcome), outcome
        assert SECRET_VALUE not in outcome
        await api.delete(PERSISTENT_VOLUME_CLAIMS, f"fz-{n}", NAMESPACE)
        await api.delete(STORAGE_CLASSES, f"fz-{n}")  # both at once: the claim must still go

        async def nothing_left() -> bool:
            state = await control.driver_call("GET", "state")
            pvs = await api.items(PERSISTENT_VOLUMES)
            return len(state["volumes"]) == len(pvs) and not await api.get(
                PERSISTENT_VOLUME_CLAIMS, f"fz-{n}", NAMESPACE
            )

        await until(nothing_left, 20, f"claim fz-{n} and its volume gone")
        for name, proc in bed.processes.items():
            assert proc.running(), f"{name} exited:\n{proc.tail()}"
    finally:
        await api.close()
        await control.close()


# --- a driver that keeps failing -------------------------------------------------------------------

BACKOFF_START, BACKOFF_MAX = 0.5, 5.0
WINDOW = 9.0


def assert_backs_off(starts: list[float], what: str) -> None:
    """Calls of one object under a persistent error: at most one immediate retry (an object change the
    first attempt itself caused), then no two quick ones in a row, and no more than back-off allows."""
    intervals = [b - a for a, b in itertools.pairwise(starts)]
    quick = [i < 0.8 * BACKOFF_START for i in intervals]
    assert not any(a and b for a, b in itertools.pairwise(quick)), (what, intervals)
    assert sum(quick) <= 1, (what, intervals)
    allowed, t, n = 2, 0.0, 0
    while t <= WINDOW:
        t += min(BACKOFF_START * 2**n, BACKOFF_MAX)
        n, allowed = n + 1, allowed + 1
    assert 2 <= len(starts) <= allowed, (what, len(starts), intervals)


async def faulted_calls(control: Control, method: str, key: str, value: str, since: float) -> list[float]:
    calls = (await control.driver_call("GET", f"calls?method={method}"))["calls"]
    return sorted(
        c["started"]
        for c in calls
        if c.get("fault") == "error" and c["request"].get(key) == value and c["started"] >= since
    )


@pytest.mark.timeout(240)
async def test_a_failing_driver_is_retried_with_back_off_and_every_object_says_why(bed: Cluster) -> None:
    api = await Api.connect(str(bed.kubeconfig))
    control = Control(bed.control_plane["url"], bed.driver_control)
    try:
        await api.create(STORAGE_CLASSES, storage_class("bo", {}))
        for name in ("bo-expand", "bo-publish"):
            body = claim_manifest(name, "Immediate", 64)
            body["spec"]["storageClassName"] = "bo"
            await api.create(PERSISTENT_VOLUME_CLAIMS, body)

        async def bound() -> list[Obj]:
            claims = [
                await api.get(PERSISTENT_VOLUME_CLAIMS, n, NAMESPACE) for n in ("bo-expand", "bo-publish")
            ]
            return (
                claims if all(((c or {}).get("status") or {}).get("phase") == "Bound" for c in claims) else []
            )

        expand_claim, publish_claim = await until(bound, 30, "two bound claims")
        pvs = {
            n: await api.get(PERSISTENT_VOLUMES, c["spec"]["volumeName"])
            for n, c in (("expand", expand_claim), ("publish", publish_claim))
        }
        handles = {n: pv["spec"]["csi"]["volumeHandle"] for n, pv in pvs.items() if pv}
        for method in ("CreateVolume", "ControllerPublishVolume", "ControllerExpandVolume"):
            await control.driver_call(
                "POST",
                "faults",
                {"method": method, "kind": "error", "code": "INTERNAL", "message": "the array is on fire"},
            )
        since = time.time()
        body = claim_manifest("bo-create", "Immediate", 64)
        body["spec"]["storageClassName"] = "bo"
        await api.create(PERSISTENT_VOLUME_CLAIMS, body)
        await api.create(PODS, pod_manifest("bo-publish-pod", "bo-publish"))
        await api.patch(
            PERSISTENT_VOLUME_CLAIMS,
            "bo-expand",
            {"spec": {"resources": {"requests": {"storage": "128Mi"}}}},
            NAMESPACE,
        )
        await asyncio.sleep(WINDOW)
        created = await api.get(PERSISTENT_VOLUME_CLAIMS, "bo-create", NAMESPACE)
        assert created is not None
        uid = created["metadata"]["uid"]
        assert_backs_off(
            await faulted_calls(control, "CreateVolume", "name", f"pvc-{uid}", since), "CreateVolume"
        )
        assert_backs_off(
            await faulted_calls(control, "ControllerPublishVolume", "volume_id", handles["publish"], since),
            "ControllerPublishVolume",
        )
        assert_backs_off(
            await faulted_calls(control, "ControllerExpandVolume", "volume_id", handles["expand"], since),
            "ControllerExpandVolume",
        )

        provision_failed = [
            e
            for e in await events_for(api, "PersistentVolumeClaim", "bo-create")
            if e["reason"] == "ProvisioningFailed"
        ]
        assert provision_failed and "the array is on fire" in provision_failed[0]["message"]
        resize_failed = [
            e
            for e in await events_for(api, "PersistentVolumeClaim", "bo-expand")
            if e["reason"] == "VolumeResizeFailed"
        ]
        assert resize_failed and "the array is on fire" in resize_failed[0]["message"]
        attachments = [
            va
            for va in await api.items(VOLUME_ATTACHMENTS)
            if va["spec"]["source"].get("persistentVolumeName") == pvs["publish"]["metadata"]["name"]
        ]  # type: ignore[index]
        assert attachments and "the array is on fire" in attachments[0]["status"]["attachError"]["message"]
    finally:
        await control.driver_call("DELETE", "faults")
        await api.close()
        await control.close()
