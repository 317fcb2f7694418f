"""Fault injection, and for each fault the evidence of what recovered the cluster from it.

`Injector.inject(step)` does what a `FaultStep` says and returns its `FaultRecord` at once; a probe
then runs in the background (bounded by `PROBE_TIMEOUT`) and fills in `recovered_by` with what it
saw — which replica took over the Lease and when, how long the driver or API server was away and
when the sidecars' next call succeeded, how the hung call ended and whether its retry succeeded,
how many watches came back. A fault nothing ran into (say, a 500 burst on a write nobody made) is
"not triggered". API bursts get their evidence afterwards from the request log (`explain_bursts`):
how many refused requests the same client later made again successfully.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from common.kube.resources import LEASES, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from testbed.chaos.apifaults import ApiServerFaults, explain_burst
from testbed.chaos.clients import Api, Control
from testbed.chaos.fleet import CSI_TIMEOUT, NAMESPACE, Fleet, replica_names
from testbed.chaos.fleet import LEASES as LEASE_NAMES
from testbed.chaos.observe import micro_time
from testbed.chaos.records import POLL, PROBE_TIMEOUT, FaultRecord, Obj, Probe, recovered
from testbed.chaos.schedule import FaultKind, FaultStep

SUPERSEDED_AFTER = 12.0
"""Seconds after a faulted call without a retry before asking whether its object went away."""
CONTROLLER_METHODS = (
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ControllerExpandVolume",
)


def _key(method: str, request: Obj) -> tuple[str, ...]:
    if method == "CreateVolume":
        return (str(request.get("name", "")),)
    if method == "ControllerPublishVolume":
        return (str(request.get("volume_id", "")), str(request.get("node_id", "")))
    return (str(request.get("volume_id", "")),)


class Injector:
    """Injects `FaultStep`s and probes their recovery (see the module docstring)."""

    def __init__(self, *, api: Api, control: Control, fleet: Fleet, say: Callable[[str], None]) -> None:
        self.api = api
        self.control = control
        self.fleet = fleet
        self.say = say
        self.records: list[FaultRecord] = []
        self._probes: dict[int, asyncio.Task[None]] = {}
        apiserver = ApiServerFaults(control)
        self._inject: dict[FaultKind, Callable[[FaultRecord], Awaitable[Probe]]] = {
            FaultKind.LEADER_KILL: self._leader_kill,
            FaultKind.STANDBY_TERM: self._standby_term,
            FaultKind.DRIVER_CRASH: self._driver_crash,
            FaultKind.CSI_HANG: lambda record: self._csi_fault(record, "hang"),
            FaultKind.CSI_LOST_RESPONSE: lambda record: self._csi_fault(record, "succeed_then_timeout"),
            FaultKind.API_RESTART: apiserver.restart,
            FaultKind.WATCHES_DROPPED: apiserver.drop_watches,
            FaultKind.WATCH_EXPIRED: apiserver.expire_watches,
            FaultKind.API_429: lambda record: apiserver.burst(record, 429),
            FaultKind.API_500: lambda record: apiserver.burst(record, 500),
            FaultKind.API_409: lambda record: apiserver.burst(record, 409),
        }

    async def inject(self, step: FaultStep) -> FaultRecord:
        record = FaultRecord(len(self.records) + 1, step, time.time())
        self.records.append(record)
        try:
            probe = await self._inject[step.kind](record)
        except Exception as exc:  # e.g. the API server still away after the previous fault
            record.triggered = False
            record.recovered_by = f"not triggered: the injection failed: {exc!r}"
            self.say(f"fault #{record.number} {step.describe()}: injection failed: {exc!r}")
            return record
        self.say(f"fault #{record.number} {step.describe()}: {record.detail}")
        task = asyncio.get_running_loop().create_task(
            self._probe(record, probe), name=f"probe fault {record.number}"
        )
        self._probes[record.number] = task
        task.add_done_callback(lambda _: self._probes.pop(record.number, None))
        return record

    async def _probe(self, record: FaultRecord, probe: Probe) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await probe()
        except TimeoutError:
            if record.triggered and record.recovered is None:
                record.recovered = False
                record.recovered_by = (
                    record.recovered_by or f"no evidence of recovery within {PROBE_TIMEOUT:.0f}s"
                )
        except Exception as exc:  # a probe failing (e.g. the API is away) is no verdict on the cluster
            record.recovered = False
            record.recovered_by = f"probe failed: {exc!r}"
        if record.recovered is not None or not record.triggered:
            state = (
                "recovered" if record.recovered else "NOT RECOVERED" if record.triggered else "not triggered"
            )
            took = f" in {record.seconds:.1f}s" if record.seconds is not None else ""
            self.say(f"fault #{record.number} {record.kind} {state}{took}: {record.recovered_by}")

    async def wait(self, timeout: float) -> None:
        """Let running probes finish (bounded), then cancel the rest."""
        tasks = list(self._probes.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def clear(self) -> None:
        """Remove every fault still armed (the churn is over); unused CSI faults: "not triggered"."""
        await self.control.apiserver_call("DELETE", "faults")
        await self.control.driver_call("DELETE", "faults")
        for record in self.records:
            task = self._probes.get(record.number)
            if record.armed and task is not None:
                task.cancel()
                record.triggered = False
                record.recovered_by = f"not triggered: no {record.step.target} call while it was armed"

    # --- processes ---------------------------------------------------------------------------------

    async def _holder(self, component: str) -> tuple[str, float]:
        lease = await self.api.get(LEASES, LEASE_NAMES[component], NAMESPACE)
        spec = (lease or {}).get("spec") or {}
        return str(spec.get("holderIdentity") or ""), micro_time(spec.get("renewTime")) or 0.0

    async def _leader_kill(self, record: FaultRecord) -> Probe:
        component = record.step.target
        holder, _ = await self._holder(component)
        names = replica_names(component)
        victim = holder if holder in names and self.fleet.alive(holder) else names[0]
        role = "leader" if victim == holder else f"no live leader (holder {holder or 'none'}), replica"
        await self.fleet.kill(victim, restart_after=record.step.pause)
        record.detail = f"SIGKILL {victim} ({role}); restart in {record.step.pause:.1f}s"

        async def probe() -> None:
            while True:
                now, (new, renewed) = time.time(), await self._holder(component)
                if new and self.fleet.alive(new) and renewed > record.injected_at:
                    how = (
                        "the standby took the Lease"
                        if new != victim
                        else "the restarted leader renewed its own Lease"
                    )
                    evidence = f"{new}: {how} {now - record.injected_at:.1f}s after the kill"
                    return recovered(record, evidence, how=how, at=now)
                await asyncio.sleep(POLL)

        return probe

    async def _standby_term(self, record: FaultRecord) -> Probe:
        component = record.step.target
        holder, _ = await self._holder(component)
        names = replica_names(component)
        standby = next((n for n in names if n != holder), names[-1])
        begun = time.monotonic()
        code = await self.fleet.terminate(standby, restart_after=record.step.pause)
        took = time.monotonic() - begun
        record.detail = f"SIGTERM {standby} (standby; leader {holder or 'none'}): exit {code} in {took:.1f}s"

        async def probe() -> None:
            if code != 0:
                record.recovered = False
                record.recovered_by = f"{standby} exited {code} on SIGTERM"
                return
            while not self.fleet.alive(standby):
                await asyncio.sleep(POLL)
            after, _ = await self._holder(component)
            leader = "leader unchanged" if after == holder else f"leader now {after or 'none'}"
            recovered(record, f"exit 0 in {took:.1f}s, restarted; {leader}")

        return probe

    # --- the CSI driver ------------------------------------------------------------------------------

    async def _calls(self, method: str) -> list[Obj]:
        answer = await self.control.driver_call("GET", f"calls?method={method}")
        calls: list[Obj] = answer.get("calls") or []
        return calls

    async def _driver_crash(self, record: FaultRecord) -> Probe:
        before = await self.control.driver_call("GET", "state")
        await self.control.driver_call(
            "POST", "crash", {"restart_after": record.step.pause, "keep_state": True}
        )
        record.detail = f"driver down for {record.step.pause:.1f}s, volumes kept"

        async def probe() -> None:
            while True:
                state = await self.control.driver_call("GET", "state")
                if state.get("serving") and state.get("starts", 0) > before.get("starts", 0):
                    break
                await asyncio.sleep(POLL)
            back = time.time()
            while True:
                for method in CONTROLLER_METHODS:
                    ok = [c for c in await self._calls(method) if c["started"] >= back and c["code"] == "OK"]
                    if ok:
                        first = min(ok, key=lambda c: c["started"])
                        evidence = (
                            f"driver back after {back - record.injected_at:.1f}s; "
                            f"{method} OK {first['started'] - back:.1f}s later (sidecars reconnected)"
                        )
                        return recovered(record, evidence, at=first["started"])
                await asyncio.sleep(0.5)

        return probe

    async def _csi_fault(self, record: FaultRecord, kind: str) -> Probe:
        method = record.step.target
        fault = await self.control.driver_call("POST", "faults", {"method": method, "kind": kind, "count": 1})
        record.detail = f"the next {method} call {'hangs' if kind == 'hang' else 'succeeds, its answer lost'}"
        record.rule = int(fault["id"])
        record.armed = True

        async def probe() -> None:
            while True:
                calls = await self._calls(method)
                hit = next(
                    (c for c in calls if c.get("fault") == kind and c["started"] >= record.injected_at), None
                )
                if hit is not None:
                    break
                await asyncio.sleep(0.5)
            record.armed = False
            key, ended = _key(method, hit["request"]), hit["started"] + hit["duration"]
            record.detail += f"; hit {'/'.join(key)}, ended {hit['code']} after {hit['duration']:.1f}s"
            while True:
                later = [
                    c
                    for c in await self._calls(method)
                    if c["started"] > hit["started"] and c["code"] == "OK"
                ]
                retry = next((c for c in later if _key(method, c["request"]) == key), None)
                if retry is not None:
                    evidence = (
                        f"the sidecar gave up after {hit['duration']:.1f}s (--timeout {CSI_TIMEOUT:g}s); "
                        f"its retry succeeded {retry['started'] - ended:.1f}s later"
                    )
                    return recovered(
                        record, evidence, how="retry succeeded", at=retry["started"] + retry["duration"]
                    )
                if time.time() - ended > SUPERSEDED_AFTER and (gone := await self._superseded(method, key)):
                    return recovered(
                        record, f"no retry needed: {gone}", how="superseded: its object went away"
                    )
                await asyncio.sleep(0.5)

        return probe

    async def _superseded(self, method: str, key: tuple[str, ...]) -> str:
        """Why the faulted call's object needs no retry any more ("" when it still does)."""
        volumes = [v for v in (await self.control.driver_call("GET", "state")).get("volumes") or []]
        if method == "CreateVolume":
            uid = key[0].removeprefix("pvc-")
            claims = await self.api.items(PERSISTENT_VOLUME_CLAIMS, NAMESPACE)
            if any(c["metadata"].get("uid") == uid for c in claims):
                return ""
            left = [v for v in volumes if v["name"] == key[0]]
            return "" if left else f"its claim was deleted and no volume named {key[0]} is left"
        pvs = await self.api.items(PERSISTENT_VOLUMES)
        handles = {((pv["spec"].get("csi") or {}).get("volumeHandle")): pv["metadata"]["name"] for pv in pvs}
        if method == "ControllerExpandVolume":
            return "" if key[0] in handles else f"volume {key[0]} was deleted"
        vas = await self.api.items(VOLUME_ATTACHMENTS)
        pv_name = handles.get(key[0])
        wanted = [va for va in vas if va["spec"]["source"].get("persistentVolumeName") == pv_name]
        return (
            "" if wanted else f"volume {key[0]} needs no attachment any more (its VolumeAttachment is gone)"
        )

    def explain_bursts(self, requests: list[Obj]) -> None:
        """Fill in the evidence of the API bursts from the request log (records as JSON dicts)."""
        for record in self.records:
            if record.kind in (FaultKind.API_429, FaultKind.API_500, FaultKind.API_409):
                explain_burst(record, requests)
