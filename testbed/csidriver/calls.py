"""Call log: every CSI call the driver received, with its result, for tests to assert on.

`CallLog` is a read-only sequence of finished `Call`s (oldest first, bounded), plus `counts` (calls
*received* per method, counted on arrival, so a hanging call is already counted) and `wait_for`, which
lets a test await "the provisioner has called CreateVolume twice" without polling.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from proto import csi_pb2

STRIPPED = "***stripped***"


def strip_secrets(message: Message) -> dict[str, Any]:
    """The request as a JSON dict with every `csi_secret` field replaced by a marker."""
    data = MessageToDict(message, preserving_proto_field_name=True)
    for field, value in message.ListFields():
        if field.GetOptions().Extensions[csi_pb2.csi_secret]:  # type: ignore[index]
            data[field.name] = STRIPPED
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if isinstance(value, Message):
                data[field.name] = strip_secrets(value)
            else:
                data[field.name] = [strip_secrets(v) for v in value]
    return data


@dataclass(frozen=True)
class Call:
    """One finished CSI call."""

    method: str
    """RPC name, e.g. "CreateVolume"."""
    request: Message
    """The request as received (secrets included)."""
    code: grpc.StatusCode
    """The status the driver answered; CANCELLED when the client gave up or the driver crashed."""
    message: str
    """The status message ("" on success)."""
    started: float
    """Wall-clock arrival time (seconds since the epoch)."""
    duration: float
    """Seconds from arrival to answer."""
    fault: str | None = None
    """The kind of the fault injected into this call, if any."""

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.code == grpc.StatusCode.OK

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view with secrets stripped (for logs and the control endpoint)."""
        return {
            "method": self.method,
            "request": strip_secrets(self.request),
            "code": self.code.name,
            "message": self.message,
            "started": self.started,
            "duration": self.duration,
            "fault": self.fault,
        }


class CallLog(Sequence[Call]):
    """The calls a driver received (`driver.calls`)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._calls: deque[Call] = deque(maxlen=maxlen)
        self.counts: Counter[str] = Counter()
        """Calls received per method (counted on arrival)."""
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def received(self, method: str) -> None:
        """Count a call on arrival."""
        self.counts[method] += 1
        self._notify()

    def finished(self, call: Call) -> None:
        """Record a call once answered."""
        self._calls.append(call)
        self._notify()

    def _notify(self) -> None:
        for reached, future in self._waiters:
            if not future.done() and reached():
                future.set_result(None)

    def of(self, method: str) -> list[Call]:
        """The finished calls of `method`, oldest first."""
        return [c for c in self._calls if c.method == method]

    def clear(self) -> None:
        """Forget all calls and counts."""
        self._calls.clear()
        self.counts.clear()

    async def wait_for(self, method: str, count: int = 1, *, finished: bool = False) -> None:
        """Wait until `count` calls of `method` were received (or finished, with `finished`).

        Bound it with `asyncio.timeout` in the caller.
        """

        def reached() -> bool:
            seen = len(self.of(method)) if finished else self.counts[method]
            return seen >= count

        if reached():
            return
        waiter = (reached, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        finally:
            self._waiters.remove(waiter)

    @overload
    def __getitem__(self, index: int) -> Call: ...

    @overload
    def __getitem__(self, index: slice) -> list[Call]: ...

    def __getitem__(self, index: int | slice) -> Call | list[Call]:
        if isinstance(index, slice):
            return list(self._calls)[index]
        return self._calls[index]

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls))
