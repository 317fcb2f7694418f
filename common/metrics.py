"""Metrics: every Prometheus metric the sidecars export, with the Go sidecars' names, help texts and buckets.

One `Metrics` owns one `CollectorRegistry` (tests and a combined process can hold several). What it
serves, and where upstream gets it:

* `csi_sidecar_operations_seconds{driver_name,grpc_status_code,method_name}`: csi-lib-utils
  `metrics`, every CSI call (`record_csi_operation`). An empty driver name is `unknown-driver`.
* `workqueue_*{name}`: client-go's workqueue metrics, one series per queue (`workqueue(name)`).
* `leader_election_master_status{name}`: client-go leaderelection (`leader_election(name)`).
* `controller_persistentvolume*`: sig-storage-lib-external-provisioner (provisioner only).
* `csistoragecapacities_*`: external-provisioner capacity tracking (`watch_capacity`).
* `process_*`: client_golang's process collector; `process_start_time_seconds` is the
  component-base one ("[ALPHA] ..." help) unless `alpha_start_time=False` (the provisioner, where
  client_golang's plain one wins).
* `csi_sidecar_reconnects_total{driver_name}`: **ours, not upstream's**: how often the gRPC channel to
  the driver was re-established (upstream exits instead, or never counts it).

Not reproduced: `go_*` runtime metrics, `promhttp_metric_handler_*`, component-base's
`registered_metrics_total` & co, `leader_election_slowpath_total`, the apiserver metrics the
sidecars export by accident, and the `migrated` label for CSI-migration drivers.

`render()` writes the text format the way Go's expfmt does (common.expfmt). The livenessprobe, which
exports only the operations histogram and the start time, does without this module and
prometheus_client (sidecars/livenessprobe/metrics.py).
"""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.csi.interceptor import (
    OPERATIONS_BUCKETS,
    OPERATIONS_HELP,
    OPERATIONS_METRIC,
    RECONNECTS_HELP,
    RECONNECTS_METRIC,
    UNKNOWN_DRIVER,
)
from common.expfmt import CONTENT_TYPE, exposition

DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """client_golang ExponentialBuckets, multiplied step by step so the floats match Go's exactly."""
    buckets = []
    for _ in range(count):
        buckets.append(start)
        start *= factor
    return tuple(buckets)


WORKQUEUE_BUCKETS = _exponential(10e-9, 10, 10)
_START_TIME_HELP = "Start time of the process since unix epoch in seconds."


class QueueMetrics(Protocol):
    """What a work queue reports (common/workqueue.py defines the same Protocol, with a no-op default)."""

    def on_add(self) -> None: ...
    def on_get(self, waited: float) -> None: ...
    def on_done(self, worked: float) -> None: ...
    def on_retry(self) -> None: ...
    def watch_in_flight(self, probe: Callable[[], tuple[float, float]]) -> None: ...


class _Queue:
    """client-go's `defaultQueueMetrics` for one queue name."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._depth = metrics._wq_depth.labels(name)
        self._adds = metrics._wq_adds.labels(name)
        self._latency = metrics._wq_latency.labels(name)
        self._work = metrics._wq_work.labels(name)
        self._retries = metrics._wq_retries.labels(name)
        self._probes = metrics._wq_probes[name]
        # Two queues may share a name (the provisioner has two "claims"): sum the unfinished work,
        # take the longest-running processor over both.
        probes = self._probes
        metrics._wq_unfinished.labels(name).set_function(lambda: sum(p()[0] for p in probes))
        metrics._wq_longest.labels(name).set_function(lambda: max((p()[1] for p in probes), default=0.0))

    def on_add(self) -> None:
        self._adds.inc()
        self._depth.inc()

    def on_get(self, waited: float) -> None:
        self._depth.dec()
        self._latency.observe(waited)

    def on_done(self, worked: float) -> None:
        self._work.observe(worked)

    def on_retry(self) -> None:
        self._retries.inc()

    def watch_in_flight(self, probe: Callable[[], tuple[float, float]]) -> None:
        self._probes.append(probe)


class _ProcessMetrics(Collector):
    """client_golang's process collector (Linux): prometheus_client's, plus network and address space."""

    def __init__(self, *, full: bool, alpha_start_time: bool) -> None:
        self._base = ProcessCollector(registry=None)
        self._full = full
        self._start_help = ("[ALPHA] " if alpha_start_time else "") + _START_TIME_HELP

    def collect(self) -> Iterator[Metric]:
        for family in self._base.collect():
            if family.name == "process_start_time_seconds":
                yield GaugeMetricFamily(family.name, self._start_help, value=family.samples[0].value)
            elif self._full:
                yield family
        if not self._full:
            return
        received = sent = 0
        try:  # procfs NetDev().Total(): every interface of the process's network namespace
            for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]:
                fields = line.split(":", 1)[1].split()
                received, sent = received + int(fields[0]), sent + int(fields[8])
        except (OSError, IndexError, ValueError):
            pass
        else:
            over = "by the process over the network."
            yield CounterMetricFamily(
                "process_network_receive_bytes", f"Number of bytes received {over}", received
            )
            yield CounterMetricFamily("process_network_transmit_bytes", f"Number of bytes sent {over}", sent)
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        yield GaugeMetricFamily(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            value=float(2**64 - 1 if limit == resource.RLIM_INFINITY else limit),
        )


class _Capacity(Collector):
    """external-provisioner's capacity collector: three gauges read from the controller at scrape time."""

    def __init__(self, probe: Callable[[], tuple[int, int, int]]) -> None:
        self._probe = probe

    def collect(self) -> Iterator[Metric]:
        goal, current, obsolete = self._probe()
        managed = "Number of CSIStorageCapacity objects that "
        yield GaugeMetricFamily(
            "csistoragecapacities_desired_goal",
            f"[ALPHA] {managed}are supposed to be managed automatically.",
            value=goal,
        )
        yield GaugeMetricFamily(
            "csistoragecapacities_desired_current",
            f"[ALPHA] {managed}exist and are supposed to be managed automatically.",
            value=current,
        )
        yield GaugeMetricFamily(
            "csistoragecapacities_obsolete",
            f"[ALPHA] {managed}exist and will be deleted automatically. Objects that exist and may need an "
            "update are not considered obsolete and therefore not included in this value.",
            value=obsolete,
        )


class Metrics:
    """The metrics of one sidecar process, in its own registry.

    `process_collector=False` serves only `process_start_time_seconds` of the process metrics (the
    livenessprobe); `alpha_start_time=False` gives that metric client_golang's help text (the provisioner).
    """

    def __init__(self, *, process_collector: bool = True, alpha_start_time: bool = True) -> None:
        self.registry = CollectorRegistry()  # no auto_describe: probes run only at scrape time
        reg = self.registry
        self.registry.register(_ProcessMetrics(full=process_collector, alpha_start_time=alpha_start_time))
        self._operations = Histogram(
            OPERATIONS_METRIC,
            OPERATIONS_HELP,
            ("driver_name", "grpc_status_code", "method_name"),
            buckets=OPERATIONS_BUCKETS,
            registry=reg,
        )
        self._reconnects = Counter(
            RECONNECTS_METRIC,
            RECONNECTS_HELP,
            ("driver_name",),
            registry=reg,
        )
        self._wq_depth = Gauge(
            "workqueue_depth", "[BETA] Current depth of workqueue", ("name",), registry=reg
        )
        self._wq_adds = Counter(
            "workqueue_adds_total",
            "[BETA] Total number of adds handled by workqueue",
            ("name",),
            registry=reg,
        )
        self._wq_latency = Histogram(
            "workqueue_queue_duration_seconds",
            "[BETA] How long in seconds an item stays in workqueue before being requested.",
            ("name",),
            buckets=WORKQUEUE_BUCKETS,
            registry=reg,
        )
        self._wq_work = Histogram(
            "workqueue_work_duration_seconds",
            "[BETA] How long in seconds processing an item from workqueue takes.",
            ("name",),
            buckets=WORKQUEUE_BUCKETS,
            registry=reg,
        )
        self._wq_unfinished = Gauge(
            "workqueue_unfinished_work_seconds",
            "[BETA] How many seconds of work has done that is in progress and hasn't been observed by "
            "work_duration. Large values indicate stuck threads. One can deduce the number of stuck threads "
            "by observing the rate at which this increases.",
            ("name",),
            registry=reg,
        )
        self._wq_longest = Gauge(
            "workqueue_longest_running_processor_seconds",
            "[BETA] How many seconds has the longest running processor for workqueue been running.",
            ("name",),
            registry=reg,
        )
        self._wq_retries = Counter(
            "workqueue_retries_total",
            "[BETA] Total number of retries handled by workqueue",
            ("name",),
            registry=reg,
        )
        self._wq_probes: defaultdict[str, list[Callable[[], tuple[float, float]]]] = defaultdict(list)
        self._wq_queues: dict[str, _Queue] = {}
        self._leader = Gauge(
            "leader_election_master_status",
            "[ALPHA] Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, "
            "1 indicates master. 'name' is the string used to identify the lease. "
            "Please make sure to group by name.",
            ("name",),
            registry=reg,
        )
        by_class = "Broken down by storage class name"
        by_source = f"{by_class} and source of the claim."
        self._provisioned = Counter(
            "controller_persistentvolumeclaim_provision_total",
            f"Total number of persistent volumes provisioned succesfully. {by_source}",
            ("class", "source"),
            registry=reg,
        )
        self._provision_failed = Counter(
            "controller_persistentvolumeclaim_provision_failed_total",
            f"Total number of persistent volume provision failed attempts. {by_source}",
            ("class", "source"),
            registry=reg,
        )
        self._provision_seconds = Histogram(
            "controller_persistentvolumeclaim_provision_duration_seconds",
            "Latency in seconds to provision persistent volumes. Failed provisioning attempts are ignored. "
            + by_source,
            ("class", "source"),
            buckets=DEF_BUCKETS,
            registry=reg,
        )
        self._deleted = Counter(
            "controller_persistentvolume_delete_total",
            f"Total number of persistent volumes deleted succesfully. {by_class}.",
            ("class",),
            registry=reg,
        )
        self._delete_failed = Counter(
            "controller_persistentvolume_delete_failed_total",
            f"Total number of persistent volume delete failed attempts. {by_class}.",
            ("class",),
            registry=reg,
        )
        self._delete_seconds = Histogram(
            "controller_persistentvolume_delete_duration_seconds",
            "Latency in seconds to delete persistent volumes. Failed deletion attempts are ignored. "
            f"{by_class}.",
            ("class",),
            buckets=DEF_BUCKETS,
            registry=reg,
        )

    def record_csi_operation(
        self, *, driver_name: str, method_name: str, grpc_status_code: str, seconds: float
    ) -> None:
        """One finished CSI call: the full gRPC method, and the code (`OK`, ..., `unknown-non-grpc`)."""
        self._operations.labels(driver_name or UNKNOWN_DRIVER, grpc_status_code, method_name).observe(seconds)

    def record_csi_reconnect(self, *, driver_name: str) -> None:
        """The channel to the driver was re-established (our own counter, see the module docstring)."""
        self._reconnects.labels(driver_name or UNKNOWN_DRIVER).inc()

    def workqueue(self, name: str) -> QueueMetrics:
        """The metrics of work queue `name`; its series appear (at zero) from now on, as in client-go."""
        if name not in self._wq_queues:
            self._wq_queues[name] = _Queue(self, name)
        return self._wq_queues[name]

    def leader_election(self, name: str) -> Callable[[bool], None]:
        """A setter for `leader_election_master_status{name}`: True when leading, False when not."""

        def set_leading(leading: bool) -> None:  # noqa: FBT001 - a callback, called positionally
            self._leader.labels(name).set(1 if leading else 0)

        return set_leading

    def record_provisioned(self, *, class_name: str, source: str, seconds: float) -> None:
        """A PVC provisioned; `source` is the dataSource kind ("" for none)."""
        self._provisioned.labels(class_name, source).inc()
        self._provision_seconds.labels(class_name, source).observe(seconds)

    def record_provision_failed(self, *, class_name: str, source: str) -> None:
        self._provision_failed.labels(class_name, source).inc()

    def record_deleted(self, *, class_name: str, seconds: float) -> None:
        self._deleted.labels(class_name).inc()
        self._delete_seconds.labels(class_name).observe(seconds)

    def record_delete_failed(self, *, class_name: str) -> None:
        self._delete_failed.labels(class_name).inc()

    def watch_capacity(self, probe: Callable[[], tuple[int, int, int]]) -> None:
        """Serve `csistoragecapacities_*` from `probe() -> (goal, current, obsolete)`, read at scrape time."""
        self.registry.register(_Capacity(probe))

    def render(self) -> tuple[bytes, str]:
        """The `/metrics` body in the Prometheus text format, and its content type."""
        return exposition(self.registry.collect()).encode(), CONTENT_TYPE
