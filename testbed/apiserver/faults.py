"""Fault injection: make chosen API requests fail, slow down, or make watches expire, on purpose.

Rules match requests by verb, resource (plural or store key), subresource, namespace and name; a
field left None matches anything. Failure rules answer the next `count` matching requests with the
Status body the real server would send for that code (500 InternalError, 429 TooManyRequests with
`Retry-After`, 409 Conflict, 503, 504...). Latency rules delay matching requests. Faults apply to the
HTTP API only: in-process control-plane stand-ins using the store directly are never faulted.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, TypedDict, Unpack

from testbed.apiserver import errors
from testbed.apiserver.routing import RequestInfo

_ids = itertools.count(1)


@dataclass
class Match:
    """Which requests a rule applies to (None: any)."""

    verb: str | None = None
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None

    def matches(self, info: RequestInfo) -> bool:
        if self.verb is not None and self.verb != info.verb:
            return False
        if self.resource is not None and (
            info.rtype is None or self.resource not in (info.rtype.plural, info.rtype.key)
        ):
            return False
        if self.subresource is not None and self.subresource != info.subresource:
            return False
        if self.namespace is not None and self.namespace != info.namespace:
            return False
        return self.name is None or self.name == info.name


class MatchFields(TypedDict, total=False):
    """The keyword filters of `Faults.fail` and `Faults.add_latency`."""

    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str


@dataclass
class FailureRule:
    match: Match
    status: int
    remaining: int
    retry_after: int
    message: str
    id: int = 0

    def error(self, info: RequestInfo) -> errors.ApiError:
        rtype = info.rtype
        if self.status == 429:
            return errors.too_many_requests(self.retry_after)
        if self.status == 409 and rtype is not None:
            return errors.conflict(rtype.plural, rtype.group, info.name)
        if self.status == 500:
            return errors.internal_error(self.message)
        err = errors.error_for_code(self.status, self.message)
        if self.status == 504:
            err.reason = "Timeout"
        if self.status in (503, 504):
            err.headers["Retry-After"] = str(self.retry_after)
        return err


@dataclass
class LatencyRule:
    match: Match
    seconds: float
    remaining: int | None
    id: int = 0


class Faults:
    """The active fault rules of one server (see `ApiServer.faults`)."""

    def __init__(self) -> None:
        self._failures: list[FailureRule] = []
        self._latencies: list[LatencyRule] = []
        self.expiring_watches = 0

    def fail(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: int = 1,
        message: str = "injected fault",
        **match: Unpack[MatchFields],
    ) -> FailureRule:
        """Answer the next `count` requests matching `match` (verb, resource...) with `status`."""
        rule = FailureRule(Match(**match), status, count, retry_after, message)
        rule.id = next(_ids)
        self._failures.append(rule)
        return rule

    def add_latency(
        self, seconds: float, *, count: int | None = None, **match: Unpack[MatchFields]
    ) -> LatencyRule:
        """Delay matching requests by `seconds` (the next `count` of them, or all while the rule exists)."""
        rule = LatencyRule(Match(**match), seconds, count)
        rule.id = next(_ids)
        self._latencies.append(rule)
        return rule

    def expire_next_watches(self, count: int = 1) -> None:
        """The next `count` watch requests get 200 and a single ERROR event with 410 Expired."""
        self.expiring_watches += count

    def remove(self, rule_id: int) -> bool:
        before = len(self._failures) + len(self._latencies)
        self._failures = [r for r in self._failures if r.id != rule_id]
        self._latencies = [r for r in self._latencies if r.id != rule_id]
        return len(self._failures) + len(self._latencies) < before

    def clear(self) -> None:
        self._failures.clear()
        self._latencies.clear()
        self.expiring_watches = 0

    def take_failure(self, info: RequestInfo) -> errors.ApiError | None:
        """The error to answer `info` with, consuming one use of the first matching rule."""
        for rule in self._failures:
            if rule.remaining > 0 and rule.match.matches(info):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._failures.remove(rule)
                return rule.error(info)
        return None

    def latency(self, info: RequestInfo) -> float:
        total = 0.0
        for rule in list(self._latencies):
            if rule.match.matches(info):
                total += rule.seconds
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._latencies.remove(rule)
        return total

    def take_watch_expiry(self) -> bool:
        if self.expiring_watches > 0:
            self.expiring_watches -= 1
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {
            "failures": [asdict(r) for r in self._failures],
            "latencies": [asdict(r) for r in self._latencies],
            "expiringWatches": self.expiring_watches,
        }
