"""CSI error classes: what a failed CSI call means for the operation that made it.

Controllers branch on `Outcome`, never on `grpc.StatusCode`:

* `classify(error, may_reschedule=...)` is external-provisioner's `checkError`: may the storage
  side still be working (IN_PROGRESS: retry with the same name, keep the claim in progress), is it
  over (FINAL), or should the scheduler pick another node (RESCHEDULE)?
* `is_final(error)` is csi-lib-utils' `IsFinalError`, used by the attacher and the resizer.
* `is_infeasible(error)` marks the errors retried only slowly (every `--retry-interval-max`).
* `code_name(error)` is the Go spelling of the code, the `grpc_status_code` metric label.

A non-gRPC exception means the call may never have reached the driver, or may have: "be safe" and
treat it as IN_PROGRESS / not final, exactly as upstream does.
"""

from __future__ import annotations

from enum import Enum

import grpc

from common.errors import CSIError

StatusCode = grpc.StatusCode

NON_GRPC = "unknown-non-grpc"


class Outcome(Enum):
    """What the caller does after a failed CSI call."""

    FINAL = "final"
    """The driver has stopped working on it: record the failure (retrying later is still allowed)."""
    IN_PROGRESS = "in-progress"
    """The operation may still be running on the storage side: retry with identical arguments."""
    RESCHEDULE = "reschedule"
    """The selected node cannot host the volume: give the decision back to the scheduler."""


# The 17 gRPC codes with their Go names (codes.Code.String(), the metric label) and what each
# means for a CSI caller. gRPC meanings: https://grpc.github.io/grpc/core/md_doc_statuscodes.html;
# CSI meanings: the "Error Scheme" and per-RPC "Errors" tables of the CSI spec (spec.md).
_GO_NAMES: dict[grpc.StatusCode, str] = {
    # Not an error. Listed so the table is total; classify() calls it FINAL (nothing is running).
    StatusCode.OK: "OK",
    # gRPC: "cancelled, typically by the caller". The driver may not have noticed: IN_PROGRESS.
    StatusCode.CANCELLED: "Canceled",
    # gRPC: "unknown error", e.g. a driver panic turned into a status. FINAL.
    StatusCode.UNKNOWN: "Unknown",
    # CSI: unsupported/invalid arguments or capabilities. FINAL, and "infeasible" (slow retry).
    StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    # gRPC: "the operation may have completed successfully" after the deadline. CSI: a CreateVolume
    # timeout is retried with the same name. IN_PROGRESS.
    StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    # CSI: volume / snapshot / node does not exist. FINAL (resizer: also infeasible).
    StatusCode.NOT_FOUND: "NotFound",
    # CSI CreateVolume: a volume with this name exists but is incompatible. FINAL.
    StatusCode.ALREADY_EXISTS: "AlreadyExists",
    # gRPC: the caller may not do this. FINAL.
    StatusCode.PERMISSION_DENIED: "PermissionDenied",
    # CSI CreateVolume: "unable to provision in accessible_topology"; ControllerPublishVolume: max
    # volumes attached. Provisioner: RESCHEDULE when a node was selected, else FINAL; IsFinalError:
    # not final.
    StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    # CSI: e.g. "volume published to another node", "volume in use". FINAL.
    StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    # CSI: "operation pending for volume": the driver is busy with this very volume. IN_PROGRESS.
    StatusCode.ABORTED: "Aborted",
    # CSI CreateVolume / ControllerExpandVolume: unsupported capacity. FINAL (resizer: infeasible).
    StatusCode.OUT_OF_RANGE: "OutOfRange",
    # gRPC: the RPC is not implemented by the driver. FINAL.
    StatusCode.UNIMPLEMENTED: "Unimplemented",
    # gRPC: an invariant broke inside the driver. FINAL.
    StatusCode.INTERNAL: "Internal",
    # gRPC: "most likely a transient condition", e.g. the driver is restarting. IN_PROGRESS.
    StatusCode.UNAVAILABLE: "Unavailable",
    # gRPC: unrecoverable data loss. FINAL.
    StatusCode.DATA_LOSS: "DataLoss",
    # gRPC: missing or bad credentials. FINAL.
    StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# external-provisioner checkError: these may still be running on the storage side.
_MAY_BE_IN_PROGRESS = frozenset(
    {StatusCode.CANCELLED, StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE, StatusCode.ABORTED}
)

# csi-lib-utils IsFinalError: the same, plus ResourceExhausted.
_NOT_FINAL = _MAY_BE_IN_PROGRESS | {StatusCode.RESOURCE_EXHAUSTED}

# Infeasible errors are retried only every --retry-interval-max:
# * provisioner CreateVolume (controller.go, "infeasible"): InvalidArgument;
# * resizer ModifyVolume (VolumeAttributesClass): InvalidArgument;
# * resizer ControllerExpandVolume: InvalidArgument, OutOfRange and NotFound.
_INFEASIBLE = frozenset({StatusCode.INVALID_ARGUMENT})
_EXPANSION_INFEASIBLE = _INFEASIBLE | {StatusCode.OUT_OF_RANGE, StatusCode.NOT_FOUND}


def status_code(error: grpc.StatusCode | BaseException | None) -> grpc.StatusCode | None:
    """The gRPC code of `error` (OK for None), or None when it is not a gRPC error."""
    if error is None:
        return StatusCode.OK
    if isinstance(error, grpc.StatusCode):
        return error
    if isinstance(error, grpc.RpcError):
        code = getattr(error, "code", None)
        if callable(code):
            value = code()
            if isinstance(value, grpc.StatusCode):
                return value
    return None


def classify(error: grpc.StatusCode | BaseException, *, may_reschedule: bool = False) -> Outcome:
    """external-provisioner `checkError`: FINAL, IN_PROGRESS or RESCHEDULE for a failed call.

    `may_reschedule` is true when the driver supports topology and a node was selected for the
    claim; only then does ResourceExhausted send the claim back to the scheduler.
    """
    code = status_code(error)
    if code is None:
        return Outcome.IN_PROGRESS  # not a gRPC status: the driver may have started; be safe
    if code in _MAY_BE_IN_PROGRESS:
        return Outcome.IN_PROGRESS
    if code is StatusCode.RESOURCE_EXHAUSTED:
        return Outcome.RESCHEDULE if may_reschedule else Outcome.FINAL
    return Outcome.FINAL


def is_final(error: grpc.StatusCode | BaseException | None) -> bool:
    """csi-lib-utils `IsFinalError`: False while the operation may still be running."""
    code = status_code(error)
    if code is None:
        return False  # not a gRPC status: we do not know, so not final
    return code not in _NOT_FINAL


def is_infeasible(error: grpc.StatusCode | BaseException | None, *, expansion: bool = False) -> bool:
    """True for errors retried only slowly: InvalidArgument; with `expansion` (the resizer's
    ControllerExpandVolume) also OutOfRange and NotFound."""
    code = status_code(error)
    return code in (_EXPANSION_INFEASIBLE if expansion else _INFEASIBLE)


def code_name(error: grpc.StatusCode | BaseException | None) -> str:
    """Go's spelling of the code ("OK", "DeadlineExceeded", ...) or "unknown-non-grpc"."""
    code = status_code(error)
    if code is None:
        return NON_GRPC
    return _GO_NAMES[code]


def describe(error: BaseException) -> str:
    """The error as Go's status error prints it: `rpc error: code = NotFound desc = ...`.

    This is the text upstream puts into events, `attachError` and condition messages.
    """
    code = status_code(error)
    if code is None:
        return str(error) or type(error).__name__
    details = getattr(error, "details", None)
    desc = details() if callable(details) else None
    return f"rpc error: code = {_GO_NAMES[code]} desc = {desc or ''}"


def call_failed(method: str, error: BaseException) -> CSIError:
    """A one-line CSIError for a failed discovery call (fatal at startup, as upstream)."""
    return CSIError(f"{method} failed: {describe(error)}")
