"""The CSI error classifiers over all 17 gRPC codes and a non-gRPC exception."""

from __future__ import annotations

import grpc
import pytest
from kit import FakeRpcError

from common.csi.errors import (
    NON_GRPC,
    Outcome,
    call_failed,
    classify,
    code_name,
    describe,
    is_final,
    is_infeasible,
    status_code,
)
from common.errors import CSIError

C = grpc.StatusCode
FINAL, IN_PROGRESS, RESCHEDULE = Outcome.FINAL, Outcome.IN_PROGRESS, Outcome.RESCHEDULE


# code, Go name, classify(), classify(may_reschedule=True), is_final(), infeasible, infeasible on expand
TABLE = [
    (C.OK, "OK", FINAL, FINAL, True, False, False),
    (C.CANCELLED, "Canceled", IN_PROGRESS, IN_PROGRESS, False, False, False),
    (C.UNKNOWN, "Unknown", FINAL, FINAL, True, False, False),
    (C.INVALID_ARGUMENT, "InvalidArgument", FINAL, FINAL, True, True, True),
    (C.DEADLINE_EXCEEDED, "DeadlineExceeded", IN_PROGRESS, IN_PROGRESS, False, False, False),
    (C.NOT_FOUND, "NotFound", FINAL, FINAL, True, False, True),
    (C.ALREADY_EXISTS, "AlreadyExists", FINAL, FINAL, True, False, False),
    (C.PERMISSION_DENIED, "PermissionDenied", FINAL, FINAL, True, False, False),
    (C.RESOURCE_EXHAUSTED, "ResourceExhausted", FINAL, RESCHEDULE, False, False, False),
    (C.FAILED_PRECONDITION, "FailedPrecondition", FINAL, FINAL, True, False, False),
    (C.ABORTED, "Aborted", IN_PROGRESS, IN_PROGRESS, False, False, False),
    (C.OUT_OF_RANGE, "OutOfRange", FINAL, FINAL, True, False, True),
    (C.UNIMPLEMENTED, "Unimplemented", FINAL, FINAL, True, False, False),
    (C.INTERNAL, "Internal", FINAL, FINAL, True, False, False),
    (C.UNAVAILABLE, "Unavailable", IN_PROGRESS, IN_PROGRESS, False, False, False),
    (C.DATA_LOSS, "DataLoss", FINAL, FINAL, True, False, False),
    (C.UNAUTHENTICATED, "Unauthenticated", FINAL, FINAL, True, False, False),
]


def test_table_covers_all_17_codes() -> None:
    assert {row[0] for row in TABLE} == set(grpc.StatusCode)
    assert len(TABLE) == 17


@pytest.mark.parametrize(
    ("code", "go", "outcome", "outcome_rs", "final", "infeasible", "infeasible_x"), TABLE
)
def test_classifiers_by_code(
    code: grpc.StatusCode,
    go: str,
    outcome: Outcome,
    outcome_rs: Outcome,
    final: bool,
    infeasible: bool,
    infeasible_x: bool,
) -> None:
    for error in (code, FakeRpcError(code, "boom")):
        assert classify(error) is outcome
        assert classify(error, may_reschedule=True) is outcome_rs
        assert is_final(error) is final
        assert is_infeasible(error) is infeasible
        assert is_infeasible(error, expansion=True) is infeasible_x
        assert code_name(error) == go
        assert status_code(error) is code


@pytest.mark.parametrize("error", [RuntimeError("socket closed"), OSError(32, "broken pipe"), TimeoutError()])
def test_non_grpc_exception_is_in_progress_and_not_final(error: BaseException) -> None:
    assert status_code(error) is None
    assert classify(error) is IN_PROGRESS
    assert classify(error, may_reschedule=True) is IN_PROGRESS
    assert is_final(error) is False
    assert is_infeasible(error) is False
    assert code_name(error) == NON_GRPC == "unknown-non-grpc"


def test_no_error_is_ok() -> None:
    assert code_name(None) == "OK"
    assert is_final(None) is True


def test_describe_uses_go_status_text() -> None:
    error = FakeRpcError(C.NOT_FOUND, "volume vol-1 not found")
    assert describe(error) == "rpc error: code = NotFound desc = volume vol-1 not found"
    assert describe(RuntimeError("boom")) == "boom"
    failed = call_failed("GetPluginInfo", FakeRpcError(C.UNAVAILABLE, "connection refused"))
    assert isinstance(failed, CSIError)
    assert str(failed) == "GetPluginInfo failed: rpc error: code = Unavailable desc = connection refused"
