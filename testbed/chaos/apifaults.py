"""API server faults: restart with state kept, watches dropped or expired, bursts of 429, 500 and 409.

Each `ApiServerFaults` method injects one fault through the test bed's `/testbed/...` endpoints and
returns the probe that waits for the evidence of recovery: the API server serving again and as many
watches open as before (with how many lists the sidecars made meanwhile: none after a mere drop, one
per informer after 410 Gone). A burst's probe waits until its requests were refused; who retried them
is read afterwards from the request log by `explain_burst`.
"""

from __future__ import annotations

import asyncio
import time

from testbed.chaos.clients import Control
from testbed.chaos.records import MECHANISM, POLL, PROBE_TIMEOUT, FaultRecord, Obj, Probe, recovered
from testbed.chaos.schedule import FaultKind


class ApiServerFaults:
    """The API server's faults (see the module docstring)."""

    def __init__(self, control: Control) -> None:
        self.control = control

    async def _watch_state(self) -> tuple[int, int]:
        """(open watches, list requests the sidecars made so far)."""
        state = await self.control.apiserver_call("GET", "state")
        watches = sum((state.get("store") or {}).get("watches", {}).values())
        counters = await self.control.apiserver_call("GET", "requests?records=false")
        lists = sum(
            row["count"]
            for agent, rows in (counters.get("byUserAgent") or {}).items()
            if agent.startswith("csi-")
            for row in rows
            if row["verb"] == "list"
        )
        return watches, lists

    def _rewatched(self, record: FaultRecord, before: int, lists: int, what: str) -> Probe:
        async def probe() -> None:
            while True:
                watches, now_lists = await self._watch_state()
                if watches >= before:
                    relists = now_lists - lists
                    return recovered(
                        record, f"{what}; {watches} watches open again, {relists} lists by the sidecars"
                    )
                await asyncio.sleep(POLL)

        return probe

    async def restart(self, record: FaultRecord) -> Probe:
        watches, lists = await self._watch_state()
        await self.control.apiserver_call("POST", "restart", {"downtime": record.step.pause})
        record.detail = f"API server down for {record.step.pause:.1f}s ({watches} watches open), state kept"
        rewatched = self._rewatched(record, watches, lists, "")

        async def probe() -> None:
            await asyncio.sleep(
                0.2
            )  # the restart begins 0.05 s after the answer; /state is retried while down
            await self.control.apiserver_call("GET", "state", retry_for=PROBE_TIMEOUT)
            back = time.time() - record.injected_at
            await rewatched()
            record.recovered_by = f"serving again after {back:.1f}s{record.recovered_by}"

        return probe

    async def drop_watches(self, record: FaultRecord) -> Probe:
        watches, lists = await self._watch_state()
        closed = (await self.control.apiserver_call("POST", "watches/close")).get("closed", 0)
        record.detail = f"{closed} watches closed"
        return self._rewatched(record, watches, lists, "re-watched")

    async def expire_watches(self, record: FaultRecord) -> Probe:
        watches, lists = await self._watch_state()
        await self.control.apiserver_call("POST", "watches/expire", {"count": watches})
        closed = (await self.control.apiserver_call("POST", "watches/close")).get("closed", 0)
        record.detail = f"{closed} watches closed, the next {watches} answer 410 Gone"
        return self._rewatched(record, watches, lists, "relisted after 410")

    async def burst(self, record: FaultRecord, status: int) -> Probe:
        verb, resource = record.step.target.split(" ", 1)
        resource, _, subresource = resource.partition("/")
        body = {"status": status, "count": record.step.count, "retryAfter": 1, "verb": verb}
        body |= {"resource": resource, "subresource": subresource}
        rule = await self.control.apiserver_call("POST", "faults", body)
        record.rule = int(rule["id"])
        record.detail = (
            f"the next {record.step.count} {verb} {record.step.target.split(' ', 1)[1]} answer {status}"
        )

        async def probe() -> None:
            while True:
                state = await self.control.apiserver_call("GET", "state")
                pending = [
                    r for r in (state.get("faults") or {}).get("failures", []) if r.get("id") == record.rule
                ]
                if not pending:
                    record.seconds = time.time() - record.injected_at
                    return  # consumed; `explain_bursts` tells who retried, from the request log
                await asyncio.sleep(POLL)

        return probe


def _target(record: FaultRecord) -> tuple[str, str, str]:
    verb, resource = record.step.target.split(" ", 1)
    resource, _, subresource = resource.partition("/")
    return verb, resource, subresource


def explain_burst(record: FaultRecord, requests: list[Obj]) -> None:
    """Which requests the burst refused, and which of them their client later made again successfully."""
    verb, resource, subresource = _target(record)
    status = {FaultKind.API_429: 429, FaultKind.API_500: 500, FaultKind.API_409: 409}[record.kind]

    def same(r: Obj) -> bool:
        return bool(r["verb"] == verb and r["resource"] == resource and r["subresource"] == subresource)

    refused = [
        r for r in requests if same(r) and r["code"] == status and r["time"] >= record.injected_at - 1
    ][: record.step.count]
    if not refused:
        record.triggered = False
        record.recovered_by = f"not triggered: no {record.step.target} request while it was armed"
        return
    retried, agents = 0, set()
    for bad in refused:
        agents.add(bad["user_agent"].split("/", 1)[0])
        who = (bad["user_agent"], bad["namespace"], bad["name"])
        later = (r for r in requests if same(r) and r["time"] > bad["time"] and r["code"] < 400)
        if any((r["user_agent"], r["namespace"], r["name"]) == who for r in later):
            retried += 1
    record.recovered = True  # consumed, and the run went on; the figures say how
    record.how = MECHANISM[record.kind] if retried else "superseded by a later sync"
    rest = len(refused) - retried
    tail = f", {rest} superseded (a later sync found nothing to redo)" if rest else ""
    record.recovered_by = (
        f"{len(refused)} refused ({', '.join(sorted(agents))}); {retried} retried successfully{tail}"
    )
