"""The livenessprobe's /metrics, without prometheus_client: the CSI operations histogram and the start time.

Upstream's livenessprobe exports `csi_sidecar_operations_seconds` and `process_start_time_seconds`
only (golden 15-livenessprobe-metrics.txt), plus, ours as in every sidecar, `csi_sidecar_reconnects_total`.
prometheus_client's package import brings its HTTP servers, urllib and OpenSSL along (~7 MiB resident
with common.notls undone), more than the probe's 40 MiB budget leaves; a fixed-bucket histogram is a
few lines. The text is written by common.expfmt, as the other sidecars' is; the integration tests
compare it with the golden file.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from common.csi.interceptor import (
    OPERATIONS_BUCKETS,
    OPERATIONS_HELP,
    OPERATIONS_METRIC,
    RECONNECTS_HELP,
    RECONNECTS_METRIC,
    UNKNOWN_DRIVER,
)
from common.expfmt import CONTENT_TYPE, exposition

START_TIME_HELP = "[ALPHA] Start time of the process since unix epoch in seconds."


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    name: str
    type: str
    documentation: str
    samples: list[Sample]


@dataclass
class _Series:
    """One histogram series: per-bucket counts (not cumulative; the last is above every bound), sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(OPERATIONS_BUCKETS) + 1))
    total: float = 0.0

    def samples(self, labels: dict[str, str]) -> list[Sample]:
        out, seen = [], 0
        for bound, count in zip((*OPERATIONS_BUCKETS, float("inf")), self.counts, strict=True):
            seen += count
            out.append(Sample(f"{OPERATIONS_METRIC}_bucket", {**labels, "le": str(bound)}, seen))
        out.append(Sample(f"{OPERATIONS_METRIC}_sum", labels, self.total))
        out.append(Sample(f"{OPERATIONS_METRIC}_count", labels, seen))
        return out


def process_start_time() -> float:
    """When this process started, in seconds since the epoch, from /proc as client_golang reads it."""
    try:
        after_name = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()  # not Linux: close enough, it is read once at start


class ProbeMetrics:
    """The livenessprobe's metrics: an `OperationRecorder` for the CSI connection, rendered for /metrics."""

    def __init__(self) -> None:
        self._operations: dict[tuple[str, str, str], _Series] = {}
        self._reconnects: dict[str, int] = {}
        self._start_time = process_start_time()

    def record_csi_operation(
        self, *, driver_name: str, method_name: str, grpc_status_code: str, seconds: float
    ) -> None:
        key = (driver_name or UNKNOWN_DRIVER, grpc_status_code, method_name)
        series = self._operations.get(key)
        if series is None:
            series = self._operations[key] = _Series()
        series.counts[bisect_left(OPERATIONS_BUCKETS, seconds)] += 1  # `le`: the first bound >= seconds
        series.total += seconds

    def record_csi_reconnect(self, *, driver_name: str) -> None:
        name = driver_name or UNKNOWN_DRIVER
        self._reconnects[name] = self._reconnects.get(name, 0) + 1

    def families(self) -> list[Family]:
        operations = [
            sample
            for (driver, code, method), series in self._operations.items()
            for sample in series.samples(
                {"driver_name": driver, "grpc_status_code": code, "method_name": method}
            )
        ]
        reconnects = [
            Sample(RECONNECTS_METRIC, {"driver_name": name}, count)
            for name, count in self._reconnects.items()
        ]
        start = [Sample("process_start_time_seconds", {}, self._start_time)]
        return [
            Family(OPERATIONS_METRIC, "histogram", OPERATIONS_HELP, operations),
            Family(RECONNECTS_METRIC.removesuffix("_total"), "counter", RECONNECTS_HELP, reconnects),
            Family("process_start_time_seconds", "gauge", START_TIME_HELP, start),
        ]

    def render(self) -> tuple[bytes, str]:
        """The `/metrics` body in the Prometheus text format, and its content type."""
        return exposition(self.families()).encode(), CONTENT_TYPE
