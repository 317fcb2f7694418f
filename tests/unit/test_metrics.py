"""Metric names, types, help texts, labels and buckets match what the Go sidecars serve (golden files)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from common.http import HttpEndpoint
from common.metrics import OPERATIONS_BUCKETS, WORKQUEUE_BUCKETS, Metrics

GOLDEN = Path(__file__).parent.parent / "golden"
WORKQUEUE = [
    "workqueue_adds_total",
    "workqueue_depth",
    "workqueue_longest_running_processor_seconds",
    "workqueue_queue_duration_seconds",
    "workqueue_retries_total",
    "workqueue_unfinished_work_seconds",
    "workqueue_work_duration_seconds",
]
PROCESS = [
    "process_cpu_seconds_total",
    "process_max_fds",
    "process_network_receive_bytes_total",
    "process_network_transmit_bytes_total",
    "process_open_fds",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
]
CONTROLLER = ["csi_sidecar_operations_seconds", "leader_election_master_status", *WORKQUEUE, *PROCESS]
PROVISIONER = [
    *CONTROLLER,
    "controller_persistentvolumeclaim_provision_total",
    "controller_persistentvolumeclaim_provision_duration_seconds",
]


@contextlib.asynccontextmanager
async def serving(endpoint: HttpEndpoint) -> AsyncIterator[str]:
    """Run the endpoint as a task; yield its base URL; cancel it afterwards."""
    task = asyncio.create_task(endpoint.serve(), name="http")
    started = asyncio.create_task(endpoint.started(), name="http started")
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    try:
        if task.done():
            started.cancel()
            task.result()
        yield f"http://127.0.0.1:{endpoint.bound_port}"
    finally:
        task.cancel()
        await asyncio.gather(task, started, return_exceptions=True)


async def scrape(metrics: Metrics) -> str:
    async with (
        serving(HttpEndpoint("127.0.0.1:0", metrics=metrics)) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


def families(text: str) -> dict[str, Metric]:
    """Families by their exposed name (the parser drops a counter's `_total`)."""
    return {
        f.name + ("_total" if f.type == "counter" else ""): f for f in text_string_to_metric_families(text)
    }


def label_names(family: Metric) -> set[str]:
    return {name for sample in family.samples for name in sample.labels if name != "le"}


def raw_buckets(text: str, name: str) -> set[str]:
    """The `le` values exactly as written (Go writes `le="1"`, not `le="1.0"`)."""
    return set(re.findall(rf'^{name}_bucket{{.*le="([^"]+)"}}', text, re.MULTILINE))


def exercise(metrics: Metrics, queues: list[str]) -> None:
    metrics.record_csi_operation(
        driver_name="", method_name="/csi.v1.Identity/GetPluginInfo", grpc_status_code="OK", seconds=0.002
    )
    metrics.record_csi_operation(
        driver_name="hostpath.csi.k8s.io",
        method_name="/csi.v1.Identity/Probe",
        grpc_status_code="OK",
        seconds=0.001,
    )
    for name in queues:
        queue = metrics.workqueue(name)
        queue.on_add()
        queue.on_get(5e-6)
        queue.on_done(0.01)
    if queues:  # a controller sidecar (not the livenessprobe)
        metrics.leader_election("")(True)


@pytest.mark.parametrize(
    ("golden", "metrics", "promised", "queues"),
    [
        ("09-provisioner-metrics.txt", Metrics(alpha_start_time=False), PROVISIONER, ["claims", "volumes"]),
        ("10-attacher-metrics.txt", Metrics(), CONTROLLER, ["csi-attacher-va", "csi-attacher-pv"]),
        ("11-resizer-metrics.txt", Metrics(), CONTROLLER, ["hostpath.csi.k8s.io-pvc"]),
        (
            "15-livenessprobe-metrics.txt",
            Metrics(process_collector=False),
            ["csi_sidecar_operations_seconds", "process_start_time_seconds"],
            [],
        ),
    ],
)
async def test_scrape_matches_the_go_sidecar(
    golden: str, metrics: Metrics, promised: list[str], queues: list[str]
) -> None:
    exercise(metrics, queues)
    if golden.startswith("09"):
        metrics.record_provisioned(class_name="golden", source="", seconds=0.0168)
    want_text = (GOLDEN / golden).read_text()
    got_text = await scrape(metrics)
    want, got = families(want_text), families(got_text)
    for name in promised:
        assert name in want, f"{name} is not in {golden}"
        assert name in got, f"{name} is not served"
        assert got[name].type == want[name].type, name
        assert got[name].documentation == want[name].documentation, name
        assert label_names(got[name]) == label_names(want[name]), name
        assert raw_buckets(got_text, name) == raw_buckets(want_text, name), name
    if golden.startswith("15"):  # the livenessprobe serves nothing else
        assert set(got) == set(promised)


async def test_bucket_boundaries_are_exactly_upstream_s() -> None:
    assert OPERATIONS_BUCKETS == (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600)
    assert WORKQUEUE_BUCKETS[0] == 1e-08 and WORKQUEUE_BUCKETS[-1] == 10.0 and len(WORKQUEUE_BUCKETS) == 10
    metrics = Metrics()
    exercise(metrics, ["q"])
    text = metrics.render()[0].decode()
    assert raw_buckets(text, "workqueue_queue_duration_seconds") == {
        *("1e-08", "1e-07", "1e-06", "9.999999999999999e-06", "9.999999999999999e-05"),
        *("0.001", "0.01", "0.1", "1", "10", "+Inf"),
    }


def test_text_is_written_like_go_expfmt() -> None:
    metrics = Metrics()
    exercise(metrics, ["claims"])
    text = metrics.render()[0].decode()
    assert "_created" not in text
    assert 'csi_sidecar_operations_seconds_bucket{driver_name="unknown-driver",grpc_status_code="OK",' in text
    assert 'method_name="/csi.v1.Identity/GetPluginInfo",le="1"} 1\n' in text
    assert 'workqueue_adds_total{name="claims"} 1\n' in text
    # A labelled metric nobody recorded yet is not served at all, like a Go *Vec without children.
    assert "controller_persistentvolume_delete_total" not in text
    assert "csi_sidecar_reconnects_total" not in text
    names = re.findall(r"^# HELP (\S+)", text, re.MULTILINE)
    assert names == sorted(names)
    # In a histogram series: buckets, then _sum, then _count (expfmt's order).
    series = [
        line.split("{")[0] for line in text.splitlines() if line.startswith("workqueue_work_duration_seconds")
    ]
    assert series[-2:] == ["workqueue_work_duration_seconds_sum", "workqueue_work_duration_seconds_count"]


def test_label_values_and_help_are_escaped() -> None:
    metrics = Metrics()
    metrics.record_deleted(class_name='we"ird\\class\n', seconds=0.1)
    text = metrics.render()[0].decode()
    assert 'controller_persistentvolume_delete_total{class="we\\"ird\\\\class\\n"} 1\n' in text


def test_workqueue_metrics_follow_the_protocol() -> None:
    metrics = Metrics()
    queue = metrics.workqueue("volumes")
    for _ in range(3):
        queue.on_add()
    queue.on_get(0.5)
    queue.on_retry()
    queue.on_done(2.0)
    queue.watch_in_flight(lambda: (1.5, 1.0))
    metrics.workqueue("volumes").watch_in_flight(lambda: (2.0, 0.5))  # a second queue with the same name
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(metrics.render()[0].decode())
        for s in f.samples
    }

    assert samples["workqueue_adds_total"] == 3
    assert samples["workqueue_depth"] == 2
    assert samples["workqueue_retries_total"] == 1
    assert samples["workqueue_queue_duration_seconds_sum"] == 0.5
    assert samples["workqueue_work_duration_seconds_sum"] == 2.0
    assert samples["workqueue_unfinished_work_seconds"] == 3.5  # summed over both queues
    assert samples["workqueue_longest_running_processor_seconds"] == 1.0  # the longest of both


def test_leader_election_gauge_flips() -> None:
    metrics = Metrics()
    set_leading = metrics.leader_election("external-attacher-leader-hostpath-csi-k8s-io")
    set_leading(True)
    assert (
        'leader_election_master_status{name="external-attacher-leader-hostpath-csi-k8s-io"} 1\n'
        in metrics.render()[0].decode()
    )
    set_leading(False)
    assert (
        'leader_election_master_status{name="external-attacher-leader-hostpath-csi-k8s-io"} 0\n'
        in metrics.render()[0].decode()
    )


def test_provisioner_and_capacity_metrics() -> None:
    metrics = Metrics()
    metrics.record_provisioned(class_name="fast", source="VolumeSnapshot", seconds=0.2)
    metrics.record_provision_failed(class_name="fast", source="")
    metrics.record_deleted(class_name="fast", seconds=0.3)
    metrics.record_delete_failed(class_name="fast")
    probed: list[int] = []

    def capacity() -> tuple[int, int, int]:
        probed.append(1)
        return 4, 3, 1

    metrics.watch_capacity(capacity)
    assert probed == []  # read at scrape time only
    metrics.record_csi_reconnect(driver_name="hostpath.csi.k8s.io")
    text = metrics.render()[0].decode()
    for line in [
        'controller_persistentvolumeclaim_provision_total{class="fast",source="VolumeSnapshot"} 1',
        'controller_persistentvolumeclaim_provision_failed_total{class="fast",source=""} 1',
        'controller_persistentvolume_delete_total{class="fast"} 1',
        'controller_persistentvolume_delete_failed_total{class="fast"} 1',
        'controller_persistentvolume_delete_duration_seconds_bucket{class="fast",le="0.5"} 1',
        "csistoragecapacities_desired_goal 4",
        "csistoragecapacities_desired_current 3",
        "csistoragecapacities_obsolete 1",
        'csi_sidecar_reconnects_total{driver_name="hostpath.csi.k8s.io"} 1',
    ]:
        assert line + "\n" in text, line
    assert "# HELP csistoragecapacities_desired_goal [ALPHA] Number of CSIStorageCapacity objects" in text


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.workqueue("only-in-one").on_add()
    assert "only-in-one" in one.render()[0].decode()
    assert "only-in-one" not in two.render()[0].decode()
