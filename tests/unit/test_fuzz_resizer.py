"""csi-resizer against fuzzed input: sizes and quantities in the claim and its volume, resize statuses
(unknown ones included), and ControllerExpandVolume answers (less capacity than asked, none at all)
and errors.

Each case runs the resize controller's `sync` with the unit fakes and the real `CSIResizer` over a
CSI stub. It must end in a `VolumeResizeSuccessful`/`FileSystemResizeRequired` event, or in a
`VolumeResizeFailed` event with a readable text (and, for errors, the `SyncError`/`Requeue` the
worker retries with backoff) — never another exception. A driver answering less than asked never
finishes the resize; one answering no capacity does not make the volume smaller than recorded.
"""

from __future__ import annotations

import re
from typing import Any, cast

import grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kit import FakeRpcError
from test_resizer_controller import make
from test_resizer_fakes import Cluster, claim, volume

from common.controller import Requeue
from common.csi import CSIConnection
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
from common.quantity import QuantityError, parse_quantity, to_bytes
from proto import csi_pb2
from sidecars.resizer import claims as c
from sidecars.resizer.expansion import SyncError
from sidecars.resizer.resizer import CSIResizer

KEY = "default/data"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNREADABLE = re.compile(r"Traceback|object at 0x|<[a-zA-Z_.]+ object")
GiB = 2**30

quantities = st.sampled_from(
    ["1Gi", "2Gi", "1536Mi", "2G", "2147483648", "0", "1e9", "100m", "", "abc", "-1Gi", "1.5.5", "Gi", "1E+3",
     "9999999999999999Ei", "0.5Gi", "3Gi"]
) | st.text(alphabet="0123456789.eEGMKik+-", max_size=6)  # fmt: skip


def _at_least(minimum: int) -> Any:
    """Quantities the API server would store where it validates them (and anything unparsable)."""

    def ok(text: str) -> bool:
        try:
            return parse_quantity(text) >= minimum
        except QuantityError:
            return True

    return quantities.filter(ok)


statuses = st.sampled_from(
    ["", c.CONTROLLER_RESIZE_IN_PROGRESS, c.CONTROLLER_RESIZE_INFEASIBLE, c.NODE_RESIZE_PENDING,
     c.NODE_RESIZE_IN_PROGRESS, c.NODE_RESIZE_INFEASIBLE, "ControllerResizeBogus"]
)  # fmt: skip


class Stub:
    """The CSI controller stub: capabilities, then the scripted ControllerExpandVolume answer."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    @property
    def controller(self) -> Stub:
        return self

    async def ControllerGetCapabilities(self, request: Any, *, timeout: float) -> Any:
        unknown = csi_pb2.ControllerServiceCapability()
        unknown.rpc.type = 999  # an enum value from a newer spec: ignored
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[unknown])

    async def ControllerExpandVolume(self, request: Any, *, timeout: float) -> Any:
        self.requests.append(request)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def bytes_or_none(size: str | None) -> int | None:
    try:
        return None if size is None else to_bytes(size)
    except QuantityError:
        return None


@FUZZ
@given(
    request=_at_least(1),  # the API server requires a positive request
    capacity=_at_least(0),
    pv_capacity=_at_least(1),
    allocated=st.none() | quantities,
    status=statuses,
    answer_bytes=st.sampled_from([0, 1, GiB, 2 * GiB - 1, 2 * GiB, 3 * GiB]),
    node_expansion=st.booleans(),
    error=st.none() | st.sampled_from([code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]),
)
@example(  # a decimal PV capacity beyond int64, written back in binary form, was capped: it shrank
    request="1Gi",
    capacity="0",
    pv_capacity="10E",
    allocated=None,
    status="",
    answer_bytes=0,
    node_expansion=False,
    error=None,
)
async def test_resize_ends_in_an_event_or_a_retried_error(
    request: str,
    capacity: str,
    pv_capacity: str,
    allocated: str | None,
    status: str,
    answer_bytes: int,
    node_expansion: bool,
    error: grpc.StatusCode | None,
) -> None:
    extra: dict[str, Any] = {}
    if allocated is not None:
        extra["allocatedResources"] = {"storage": allocated}
    if status:
        extra["allocatedResourceStatuses"] = {"storage": status}
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUME_CLAIMS, claim(request, capacity=capacity, **extra))
    cluster.add(PERSISTENT_VOLUMES, volume(pv_capacity))
    answer: Any = (
        FakeRpcError(error, "driver says no")
        if error is not None
        else csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=answer_bytes, node_expansion_required=node_expansion
        )
    )
    stub = Stub(answer)
    resizer = CSIResizer(
        name="hostpath.csi.k8s.io", csi=cast(CSIConnection, stub), kube=cluster.kube.client(), timeout=1.0
    )
    controller, _ = make(cluster, resizer)  # type: ignore[arg-type]
    before = bytes_or_none(c.pv_capacity(cluster.pv()))
    try:
        await controller.sync(KEY)
        raised: BaseException | None = None
    except (SyncError, Requeue) as err:
        raised = err
    events = cluster.recorder.events
    for _, _reason, message, _ in events:
        assert message.strip() and not UNREADABLE.search(message), message
    if isinstance(raised, SyncError):
        assert events and events[-1][1] == "VolumeResizeFailed", (raised, events)
        assert str(raised)
    after = bytes_or_none(c.pv_capacity(cluster.pv()))
    if stub.requests and error is None and answer_bytes == 0 and after is not None and before is not None:
        assert after >= before, (before, after)  # a driver saying nothing did not shrink the volume
    if stub.requests and error is None:
        asked = stub.requests[-1].capacity_range.required_bytes
        finished = "VolumeResizeSuccessful" in [reason for _, reason, _, _ in events]
        if 0 < answer_bytes < asked:
            assert not finished, (asked, answer_bytes, events)
            assert events[-1][1] == "VolumeResizeFailed", events


async def test_a_driver_answering_less_than_asked_does_not_finish_the_resize() -> None:
    cluster = Cluster()
    cluster.add(PERSISTENT_VOLUME_CLAIMS, claim("2Gi", capacity="1Gi"))
    cluster.add(PERSISTENT_VOLUMES, volume("1Gi"))
    stub = Stub(csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=GiB + 1, node_expansion_required=False))
    resizer = CSIResizer(
        name="hostpath.csi.k8s.io", csi=cast(CSIConnection, stub), kube=cluster.kube.client(), timeout=1.0
    )
    controller, _ = make(cluster, resizer)  # type: ignore[arg-type]
    try:
        await controller.sync(KEY)
    except SyncError as err:
        assert "less than the" in str(err)
    else:
        raise AssertionError("the short expansion was accepted")
    assert parse_quantity(cluster.pvc()["status"]["capacity"]["storage"]) == GiB
    assert cluster.recorder.events[-1][1] == "VolumeResizeFailed"
