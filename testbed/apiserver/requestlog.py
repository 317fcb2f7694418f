"""The request log: every API request served, with counters per verb/resource/subresource and per client.

Tests and benchmarks count API calls with it (`log.count(verb="patch", resource="persistentvolumes")`),
and an RBAC check can compare what each sidecar (told apart by its User-Agent) used against its
ClusterRole. Readable from Python and as JSON over `/testbed/requests`; `reset()` starts over.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One served request, as an audit log line would show it."""

    time: float
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    user_agent: str
    user: str
    path: str
    duration: float

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.verb, self.group, self.resource, self.subresource


class RequestLog:
    """The last `max_records` requests, plus counters that keep counting past that."""

    def __init__(self, max_records: int = 20_000):
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._by_agent: Counter[tuple[str, str, str, str, str]] = Counter()

    def record(self, record: RequestRecord) -> None:
        self._records.append(record)
        if record.resource:
            self._counts[record.key] += 1
            self._by_agent[(record.user_agent, *record.key)] += 1

    def reset(self) -> None:
        self._records.clear()
        self._counts.clear()
        self._by_agent.clear()

    def records(self) -> list[RequestRecord]:
        return list(self._records)

    def count(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        subresource: str | None = None,
        group: str | None = None,
        user_agent: str | None = None,
    ) -> int:
        """How many resource requests matched (None matches anything; `user_agent` matches a prefix)."""
        wanted = (verb, group, resource, subresource)
        total = 0
        for (agent, *key), n in self._by_agent.items():
            if user_agent is not None and not agent.startswith(user_agent):
                continue
            if all(w is None or w == k for w, k in zip(wanted, key, strict=True)):
                total += n
        return total

    def counters(self) -> list[dict[str, Any]]:
        return [
            {"verb": v, "group": g, "resource": r, "subresource": s, "count": n}
            for (v, g, r, s), n in sorted(self._counts.items())
        ]

    def by_user_agent(self) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {}
        for (agent, v, g, r, s), n in sorted(self._by_agent.items()):
            result.setdefault(agent, []).append(
                {"verb": v, "group": g, "resource": r, "subresource": s, "count": n}
            )
        return result

    def as_json(self, *, with_records: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"counters": self.counters(), "byUserAgent": self.by_user_agent()}
        if with_records:
            body["requests"] = [asdict(r) for r in self._records]
        return body
