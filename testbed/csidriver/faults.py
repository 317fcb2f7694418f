"""Fault injection: per-RPC rules that delay, fail, hang, lose the answer or crash the driver.

A rule names a CSI method ("CreateVolume", or "*" for any), a `FaultKind`, and optionally how many of
the next matching calls it applies to (`count`; None means until cleared) and which requests it
matches (`match`: request field → value, dotted paths and map keys allowed, e.g.
``{"name": "pvc-1"}`` or ``{"parameters.type": "slow"}``; or a predicate on the request). The first
active rule that matches a call applies to it; a rule whose count runs out disappears.

Kinds (every kind first sleeps `delay` seconds when set, before doing any work):

* ``delay`` — then do the work and answer normally (a client that gives up during the delay leaves
  nothing behind).
* ``error`` — answer `code` / `message` without doing anything.
* ``hang`` — never answer; the call ends when the client cancels or its deadline passes.
* ``succeed_then_timeout`` — do the work (a CreateVolume really creates the volume), then, whatever
  its outcome, never answer (`timeout` None) or answer DEADLINE_EXCEEDED after `timeout` seconds.
  This is the lost-response case that makes a provisioner leak volumes if it does not retry with the
  same name.
* ``crash`` — the driver stops serving (server closed, socket removed; in-flight calls fail
  UNAVAILABLE) and comes back on the same socket after `restart_after` seconds (None: stays down), with
  its volumes kept (`keep_state`) or lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict, Unpack

import grpc
from google.protobuf.message import Message

from proto import csi_pb2

METHODS = frozenset(
    m.name for s in ("Identity", "Controller", "Node") for m in csi_pb2.DESCRIPTOR.services_by_name[s].methods
)


class FaultKind(StrEnum):
    """What a fault does to the calls it matches."""

    DELAY = "delay"
    ERROR = "error"
    HANG = "hang"
    SUCCEED_THEN_TIMEOUT = "succeed_then_timeout"
    CRASH = "crash"


Predicate = Callable[[Message], bool]


class FaultOptions(TypedDict, total=False):
    """Optional settings of a fault (see `Fault`)."""

    count: int | None
    match: Mapping[str, Any] | Predicate | None
    delay: float
    code: grpc.StatusCode
    message: str
    timeout: float | None
    restart_after: float | None
    keep_state: bool


@dataclass(kw_only=True)
class Fault:
    """One injection rule."""

    method: str
    """RPC name ("CreateVolume") or "*" for every RPC."""
    kind: FaultKind
    count: int | None = None
    """How many more matching calls it applies to; None is unlimited."""
    match: Mapping[str, Any] | Predicate | None = None
    """Request field → expected value (compared as strings), or a predicate on the request."""
    delay: float = 0.0
    """Seconds to sleep before acting (the whole effect of a DELAY fault)."""
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """ERROR: the status code answered."""
    message: str = "injected fault"
    """ERROR / SUCCEED_THEN_TIMEOUT: the status message answered."""
    timeout: float | None = None
    """SUCCEED_THEN_TIMEOUT: seconds before answering DEADLINE_EXCEEDED; None never answers."""
    restart_after: float | None = 0.5
    """CRASH: seconds the driver stays down; None stays down until restarted explicitly."""
    keep_state: bool = True
    """CRASH: whether volumes and snapshots survive the restart."""
    id: int = 0
    """Assigned by `Faults.add`."""
    hits: int = 0
    """How many calls it has applied to."""

    def matches(self, method: str, request: Message) -> bool:
        """True when this rule applies to a call of `method` with `request`."""
        if self.method not in ("*", method):
            return False
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(request))
        return all(_field(request, path) == str(want) for path, want in self.match.items())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for the control endpoint)."""
        return {
            "id": self.id,
            "method": self.method,
            "kind": str(self.kind),
            "count": self.count,
            "match": None if self.match is None or callable(self.match) else dict(self.match),
            "delay": self.delay,
            "code": self.code.name,
            "message": self.message,
            "timeout": self.timeout,
            "restart_after": self.restart_after,
            "keep_state": self.keep_state,
            "hits": self.hits,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from JSON (code by name, e.g. "RESOURCE_EXHAUSTED"); ValueError if invalid."""
        known = set(FaultOptions.__annotations__) | {"method", "kind"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        fields = dict(data)
        if "code" in fields:
            try:
                fields["code"] = grpc.StatusCode[str(fields["code"]).upper()]
            except KeyError:
                raise ValueError(f"unknown status code {fields['code']!r}") from None
        fields["kind"] = FaultKind(fields.get("kind", ""))
        return cls(**fields)


def _field(message: Message, path: str) -> str | None:
    """The string value at a dotted `path` of `message` (map keys allowed), None if absent."""
    value: Any = message
    for part in path.split("."):
        if isinstance(value, Message):
            if not hasattr(value, part):
                return None
            value = getattr(value, part)
        elif hasattr(value, "get") and hasattr(value, "keys"):
            if part not in value:
                return None
            value = value[part]
        else:
            return None
    return str(value)


class Faults:
    """The active fault rules of one driver (`driver.faults`)."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, method: str, kind: FaultKind | str, **options: Unpack[FaultOptions]) -> Fault:
        """Add a rule for `method` ("*" for all) and return it; ValueError for an unknown method/kind."""
        return self.add_fault(Fault(method=method, kind=FaultKind(kind), **options))

    def add_fault(self, fault: Fault) -> Fault:
        """Add a built rule (e.g. from `Fault.from_dict`) and return it."""
        if fault.method != "*" and fault.method not in METHODS:
            raise ValueError(f"unknown CSI method {fault.method!r}")
        if fault.count is not None and fault.count < 1:
            raise ValueError("count must be at least 1 (or None for unlimited)")
        fault.id = next(self._ids)
        self._rules.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        """Remove one rule by id; False if it was not there (e.g. already used up)."""
        before = len(self._rules)
        self._rules = [f for f in self._rules if f.id != fault_id]
        return len(self._rules) != before

    def clear(self, method: str | None = None) -> None:
        """Remove every rule, or every rule for `method`."""
        self._rules = [f for f in self._rules if method is not None and f.method != method]

    def take(self, method: str, request: Message) -> Fault | None:
        """The rule that applies to this call, counting it; None when the call runs normally."""
        for fault in self._rules:
            if fault.matches(method, request):
                fault.hits += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._rules.remove(fault)
                return fault
        return None

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._rules))

    def __len__(self) -> int:
        return len(self._rules)
