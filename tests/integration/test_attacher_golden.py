"""csi-attacher against the test bed writes what the Go external-attacher wrote (golden 03, 04, 05, 08, 10).

One run of the real entrypoint with leader election, as in the golden capture: attach `golden-va`
(03: finalizer, node-id annotation, `attached: true`; 04: the PV's finalizers), fail `golden-va-bad`
on a node without CSINode (05: the attachError text, no errorCode), hold the Lease (08), detach,
and serve /metrics with the families, labels and series of 10. Then SIGTERM: exit 0.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from attacher_fixtures import (
    LEASE,
    PV_NAME,
    add_volume,
    attached,
    comparable,
    create_node,
    create_pv,
    create_va,
    delete_va,
    golden,
    start_attacher,
    stop_cleanly,
    wait_gone,
    wait_va,
)
from kit import eventually, free_port, scrape
from prometheus_client.parser import text_string_to_metric_families

from common.kube.client import KubeClient
from common.kube.resources import LEASES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from testbed.csidriver import DEFAULT_CONTROLLER_CAPABILITIES, DriverConfig, TestDriver

HANDLE = golden("04-pv-while-attached.json")["spec"]["csi"]["volumeHandle"]


@pytest.fixture
def driver_config() -> DriverConfig:
    """hostpath as deployed for the capture: no LIST_VOLUMES_PUBLISHED_NODES (no ListVolumes in 10)."""
    caps = DEFAULT_CONTROLLER_CAPABILITIES - {"LIST_VOLUMES_PUBLISHED_NODES"}
    return DriverConfig(controller_capabilities=caps)


def families(text: str) -> dict[str, Any]:
    return {
        f.name + ("_total" if f.type == "counter" else ""): f for f in text_string_to_metric_families(text)
    }


def series(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of a family's `_count` (histograms) or plain samples, `le` left out."""
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_count"):
                found.add(tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
    return found


async def test_objects_lease_and_metrics_match_the_go_attacher(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    add_volume(driver, HANDLE)
    await create_node(kube)
    await create_pv(kube)
    port = free_port()
    process = start_attacher(
        sidecar,
        kubeconfig,
        driver,
        "--leader-election",
        "--leader-election-namespace=default",
        port=port,
        env={"POD_NAME": "vm"},
    )

    await create_va(kube, "golden-va")
    va = await wait_va(kube, "golden-va", attached, timeout=30)
    want = golden("03-attached-va.json")
    publish_context = va["status"].pop("attachmentMetadata", None)
    assert publish_context and "device" in publish_context  # the test driver has one; hostpath had none
    assert comparable(va) == comparable(want)

    pv = await kube.get(PERSISTENT_VOLUMES, PV_NAME)
    want_pv = comparable(golden("04-pv-while-attached.json"))
    assert comparable(pv) == want_pv

    await create_va(kube, "golden-va-bad", node="node-missing")
    bad = await wait_va(kube, "golden-va-bad", lambda obj: "attachError" in obj.get("status", {}))
    want_bad = golden("05-va-attach-error.json")
    assert comparable(bad) == comparable(want_bad)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bad["status"]["attachError"]["time"])

    lease = await kube.get(LEASES, LEASE, namespace="default")
    want_lease = next(item for item in golden("08-leases.json")["items"] if item["metadata"]["name"] == LEASE)
    assert lease["spec"]["holderIdentity"] == want_lease["spec"]["holderIdentity"] == "vm"
    assert lease["spec"]["leaseDurationSeconds"] == want_lease["spec"]["leaseDurationSeconds"]
    assert set(lease["spec"]) >= set(want_lease["spec"])

    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    await delete_va(kube, "golden-va-bad")  # never got our finalizer: goes at once
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va-bad")

    want_text = golden_metrics()
    text = await eventually(lambda: scrape(port), message="metrics")
    got, want_families = families(text), families(want_text)
    for name in (
        "csi_sidecar_operations_seconds",
        "leader_election_master_status",
        "workqueue_adds_total",
        "workqueue_depth",
        "workqueue_queue_duration_seconds",
        "workqueue_work_duration_seconds",
        "workqueue_retries_total",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "process_start_time_seconds",
    ):
        assert name in got, name
        assert got[name].type == want_families[name].type, name
        assert got[name].documentation == want_families[name].documentation, name
        assert series(text, name) == series(want_text, name), name
    await stop_cleanly(process)


def golden_metrics() -> str:
    from attacher_fixtures import GOLDEN

    return (GOLDEN / "10-attacher-metrics.txt").read_text()
