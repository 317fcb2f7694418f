"""What became of one fault: the record the injectors fill in, and what recovers each kind.

A `FaultRecord` starts with what was done (`detail`); a probe then sets `recovered` (True with the
evidence in `recovered_by`, False when none came within `PROBE_TIMEOUT`), or marks it not triggered.
`MECHANISM` names, per kind, what is expected to recover the cluster; `how` says what did.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from testbed.chaos.schedule import FaultKind, FaultStep

Obj = dict[str, Any]
Probe = Callable[[], Awaitable[None]]
"""Waits for the evidence of recovery and records it (bounded by the injector)."""
PROBE_TIMEOUT = 30.0
POLL = 0.2
MECHANISM = {
    FaultKind.LEADER_KILL: "the standby took the Lease after it expired",
    FaultKind.STANDBY_TERM: "graceful exit 0, restarted as standby",
    FaultKind.DRIVER_CRASH: "gRPC reconnect once the driver served again",
    FaultKind.CSI_HANG: "--timeout ended the call, the retry succeeded",
    FaultKind.CSI_LOST_RESPONSE: "--timeout ended the call, the idempotent retry found the work done",
    FaultKind.API_RESTART: "clients reconnected, informers watched again",
    FaultKind.WATCHES_DROPPED: "informers re-watched from their last resourceVersion",
    FaultKind.WATCH_EXPIRED: "informers relisted after 410 Gone",
    FaultKind.API_429: "the client waited Retry-After and retried",
    FaultKind.API_500: "retried with back-off",
    FaultKind.API_409: "re-read and retried",
}


@dataclass
class FaultRecord:
    """One injected fault and what became of it."""

    number: int
    step: FaultStep
    injected_at: float
    """Wall-clock time (seconds since the epoch)."""
    detail: str = ""
    """What exactly was done (which replica, how many watches...)."""
    recovered: bool | None = None
    """True: evidence of recovery seen; False: not within PROBE_TIMEOUT; None: probing or not triggered."""
    triggered: bool = True
    recovered_by: str = ""
    seconds: float | None = None
    """Seconds from injection to the evidence of recovery."""
    rule: int = 0
    """API bursts: the test bed's rule id."""
    armed: bool = False
    """CSI faults: set until a call ran into it."""
    how: str = ""
    """A short label of what recovered it, for the tally ("standby took the Lease", "retry succeeded")."""

    @property
    def kind(self) -> FaultKind:
        return self.step.kind


def recovered(record: FaultRecord, evidence: str, *, how: str = "", at: float | None = None) -> None:
    """Record the evidence of recovery (seen at wall-clock time `at`, default now)."""
    record.recovered = True
    record.recovered_by = evidence
    record.how = how or MECHANISM[record.kind]
    record.seconds = (at or time.time()) - record.injected_at
