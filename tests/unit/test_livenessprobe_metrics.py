"""The livenessprobe's own metrics (no prometheus_client) render exactly as common.metrics does."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import ProcessCollector

from common.csi.interceptor import OPERATIONS_BUCKETS
from common.metrics import Metrics
from sidecars.livenessprobe.metrics import ProbeMetrics, process_start_time

OPERATION = st.tuples(
    st.sampled_from(["", "hostpath.csi.k8s.io", 'odd"driver\\name']),
    st.sampled_from(["/csi.v1.Identity/Probe", "/csi.v1.Identity/GetPluginInfo"]),
    st.sampled_from(["OK", "DeadlineExceeded", "Unavailable", "unknown-non-grpc"]),
    st.one_of(st.sampled_from([0.0, *OPERATIONS_BUCKETS, 601.0]), st.floats(0, 1000, allow_nan=False)),
)


def without_start_time(text: str) -> str:
    """The start time's value line aside: the two read it from /proc at different moments."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("process_start_time_seconds "))


@given(st.lists(OPERATION, max_size=30), st.lists(st.sampled_from(["", "hostpath.csi.k8s.io"]), max_size=3))
def test_same_text_as_prometheus_client(
    operations: list[tuple[str, str, str, float]], reconnects: list[str]
) -> None:
    ours, reference = ProbeMetrics(), Metrics(process_collector=False)
    for driver, method, code, seconds in operations:
        for metrics in (ours, reference):
            metrics.record_csi_operation(
                driver_name=driver, method_name=method, grpc_status_code=code, seconds=seconds
            )
    for driver in reconnects:
        ours.record_csi_reconnect(driver_name=driver)
        reference.record_csi_reconnect(driver_name=driver)
    body, content_type = ours.render()
    expected_body, expected_type = reference.render()
    assert content_type == expected_type
    assert without_start_time(body.decode()) == without_start_time(expected_body.decode())


def test_a_bucket_bound_counts_in_its_own_bucket() -> None:
    """`le` is inclusive: exactly 0.1 s is in the 0.1 bucket, a hair more is not."""
    metrics = ProbeMetrics()
    for seconds in (0.1, 0.1000001):
        metrics.record_csi_operation(
            driver_name="d", method_name="/m", grpc_status_code="OK", seconds=seconds
        )
    text = metrics.render()[0].decode()
    assert 'le="0.1"} 1\n' in text and 'le="0.25"} 2\n' in text and 'le="+Inf"} 2\n' in text
    assert '_count{driver_name="d",grpc_status_code="OK",method_name="/m"} 2\n' in text


def test_start_time_as_client_golang_reads_it() -> None:
    families = ProcessCollector(registry=None).collect()
    (family,) = [f for f in families if f.name == "process_start_time_seconds"]
    assert abs(process_start_time() - family.samples[0].value) < 0.02
    assert process_start_time() <= time.time()
