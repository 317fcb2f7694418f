"""Fuzzed input to the shared pieces every sidecar leans on: quantities, CSI error classification and
text, unknown enum values in capability answers, and secret stripping of logged requests."""

from __future__ import annotations

from fractions import Fraction

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from common.csi.connection import _enum_names
from common.csi.errors import Outcome, classify, describe, is_final, is_infeasible
from common.csi.sanitize import strip_secrets
from common.quantity import QuantityError, canonical, compare, format_quantity, parse_quantity, to_bytes
from proto import csi_pb2

FUZZ = settings(max_examples=300, deadline=None)
quantity_text = st.text(alphabet="0123456789.+-eEKMGTPnumkiI ", max_size=12) | st.text(max_size=8)


@FUZZ
@given(text=quantity_text)
def test_quantities_parse_or_raise_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError as err:
        assert str(err)
        return
    assert isinstance(value, Fraction)
    assert parse_quantity(canonical(text)) == value  # canonical form means the same amount
    assert compare(text, canonical(text)) == 0


@FUZZ
@given(value=st.integers(min_value=0, max_value=2**63 - 1), binary=st.booleans())
def test_byte_counts_format_and_parse_back(value: int, binary: bool) -> None:
    assert to_bytes(format_quantity(value, binary=binary)) == value


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@FUZZ
@given(
    code=st.sampled_from([c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]),
    details=st.none() | st.text(max_size=40),
    may_reschedule=st.booleans(),
)
def test_every_status_code_is_classified_and_described(
    code: grpc.StatusCode, details: str | None, may_reschedule: bool
) -> None:
    error = Failure(code, details)
    assert classify(error, may_reschedule=may_reschedule) in set(Outcome)
    assert isinstance(is_final(error), bool) and isinstance(is_infeasible(error, expansion=True), bool)
    text = describe(error)
    assert text.startswith("rpc error: code = ") and text.endswith(f"desc = {details or ''}")


@FUZZ
@given(error=st.sampled_from([ValueError, RuntimeError, TimeoutError, KeyError]), text=st.text(max_size=20))
def test_a_non_grpc_error_is_in_progress_and_described_by_its_text(error: type[Exception], text: str) -> None:
    exc = error(text)
    assert classify(exc) is Outcome.IN_PROGRESS and not is_final(exc)
    assert describe(exc)


@FUZZ
@given(numbers=st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=6))
def test_unknown_capability_enum_values_are_kept_by_number_never_fatal(numbers: list[int]) -> None:
    kinds = csi_pb2.ControllerServiceCapability.RPC.Type
    names = _enum_names(kinds, numbers)
    for number in numbers:
        known = kinds.DESCRIPTOR.values_by_number.get(number)
        assert (known.name if known is not None else str(number)) in names
    response = csi_pb2.ControllerGetCapabilitiesResponse()
    for number in numbers:
        response.capabilities.add().rpc.type = number  # an open enum: a newer driver's value survives
    parsed = csi_pb2.ControllerGetCapabilitiesResponse.FromString(response.SerializeToString())
    assert [c.rpc.type for c in parsed.capabilities] == numbers


secret_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=20)


@FUZZ
@given(
    secrets=st.dictionaries(st.text(max_size=8), secret_values, min_size=1, max_size=3),
    parameters=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    name=st.text(max_size=10),
)
def test_logged_requests_never_show_secret_values(
    secrets: dict[str, str], parameters: dict[str, str], name: str
) -> None:
    requests = [
        csi_pb2.CreateVolumeRequest(name=name, parameters=parameters, secrets=secrets),
        csi_pb2.ControllerPublishVolumeRequest(volume_id=name, node_id="n", secrets=secrets),
        csi_pb2.ControllerExpandVolumeRequest(volume_id=name, secrets=secrets),
        csi_pb2.NodeStageVolumeRequest(volume_id=name, staging_target_path="/s", secrets=secrets),
        csi_pb2.DeleteVolumeRequest(volume_id=name, secrets=secrets),
    ]
    for request in requests:
        logged = strip_secrets(request)
        for value in secrets.values():
            if value not in name and all(value not in v and value not in k for k, v in parameters.items()):
                assert value not in logged, (type(request).__name__, logged)
