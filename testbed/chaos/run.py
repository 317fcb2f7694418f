"""One soak from start to verdict: start, churn and inject on schedule, settle, judge, report, stop.

    soak(Options(duration=180, seed=1)) -> exit code (0 only when every invariant held)

1. The test bed (control plane and CSI driver processes) and the fleet of sidecars start; the soak
   waits until the registrar registered the driver and each component has a leader.
2. For `duration` seconds the churn steps and the fault steps run on their schedule (two tasks);
   a snapshot is taken every second, a progress line printed every `progress` seconds.
3. The churn stops, faults still armed are removed, and the cluster gets up to `settle` seconds to
   converge: the invariants are checked every second until they hold twice in a row.
4. The sidecars' metrics are scraped, they are stopped with SIGTERM (exit codes join the crash-loop
   invariant), and the verdicts, fault tally and operations are printed. With a work directory
   everything stays there: logs/, report.json, events.json, requests.json, metrics/, schedule.txt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common.kube.resources import CSI_NODES, EVENTS
from testbed.chaos import invariants as inv
from testbed.chaos.churn import Churn, SoakSecret
from testbed.chaos.clients import Api, Control
from testbed.chaos.faults import Injector
from testbed.chaos.fleet import LEASES, SOAK_FLAGS, Fleet
from testbed.chaos.observe import LeaseTracker, Observer, RequestCollector, Snapshot
from testbed.chaos.report import (
    as_json,
    fault_lines,
    operation_lines,
    progress,
    tally,
    tally_lines,
    verdict_lines,
)
from testbed.chaos.schedule import Schedule, draw
from testbed.launch import DRIVER_NAME, NODE, Cluster

READY_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True)
class Options:
    """What `python -m testbed.chaos` was asked to do."""

    duration: float = 180.0
    """Seconds of churn and faults."""
    seed: int = 1
    settle: float = 60.0
    """Seconds the cluster may take to converge after the churn."""
    verbosity: int = 2
    """The sidecars' --v."""
    churn_rate: float = 2.0
    """Churn steps per second."""
    progress: float = 5.0
    """Seconds between progress lines."""
    workdir: Path | None = None
    """Keep logs and reports here; None: a temporary directory, removed at the end."""


class Soak:
    """The state of one run (see the module docstring)."""

    def __init__(self, options: Options, schedule: Schedule) -> None:
        self.options = options
        self.schedule = schedule
        self.started = time.monotonic()
        self.cluster = Cluster(workdir=options.workdir, keep=options.workdir is not None)
        self.fleet = Fleet(self.cluster, options.verbosity, say=self.say)
        self.secret = SoakSecret()
        self._stopped: set[str] = set()
        """Sidecars stopped at the end on purpose (they count as alive for the Lease verdict)."""

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    async def run(self) -> int:
        try:
            await self.cluster.start_testbed()
            self.fleet.start()
            api = await Api.connect(str(self.cluster.kubeconfig))
            control = Control(self.cluster.control_plane["url"], self.cluster.driver_control)
            try:
                return await self._soak(api, control)
            finally:
                await api.close()
                await control.close()
        finally:
            await self.cluster.stop()

    async def _ready(self, api: Api, observer: Observer) -> None:
        async def ready() -> bool:
            node = await api.get(CSI_NODES, NODE)
            drivers = ((node or {}).get("spec") or {}).get("drivers") or []
            snap = await observer.once()
            leaders = [
                ((lease or {}).get("spec") or {}).get("holderIdentity") for lease in snap.leases.values()
            ]
            return any(d["name"] == DRIVER_NAME for d in drivers) and all(leaders)

        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while not await ready():
                    await asyncio.sleep(0.2)
        except TimeoutError:
            tails = "\n".join(f"--- {p.name}\n{p.tail(5)}" for p in self.cluster.processes.values())
            raise RuntimeError(
                f"not ready within {READY_TIMEOUT:.0f}s (the driver registered, a leader per component)"
                f"\n{tails}"
            ) from None

    async def _soak(self, api: Api, control: Control) -> int:
        churn = Churn(api, self.secret)
        injector = Injector(api=api, control=control, fleet=self.fleet, say=self.say)
        observer = Observer(api, control)
        leases = LeaseTracker(self.fleet)
        requests = RequestCollector(control)
        await self._ready(api, observer)
        self.say(f"ready: driver registered, leaders elected ({', '.join(LEASES)}); churn starts")
        await churn.setup()
        observer.listeners += [churn.observe, leases.observe]
        async with asyncio.TaskGroup() as background:
            tasks = [
                background.create_task(observer.run(), name="chaos observer"),
                background.create_task(self.fleet.supervise(), name="chaos supervisor"),
                background.create_task(requests.run(), name="chaos request log"),
                background.create_task(self._progress(churn, injector, observer), name="chaos progress"),
            ]
            async with asyncio.TaskGroup() as steps:
                steps.create_task(self._churn(churn), name="chaos churn")
                steps.create_task(self._faults(injector), name="chaos faults")
            churn.stop()
            await injector.clear()
            self.say(f"churn over; settling (at most {self.options.settle:.0f}s)")
            settled, snap = await self._settle(observer, churn, leases)
            self.say(f"settled in {settled:.1f}s" if snap is not None else "did NOT settle")
            await injector.wait(timeout=15.0)
            for task in tasks:
                task.cancel()
        await requests.collect()
        injector.explain_bursts(requests.records)
        await self.fleet.restarted(timeout=15.0)  # a leader killed late is back before the end
        final = snap or await observer.once()
        sockets = self._sockets()
        await self._scrape_metrics()
        await self._stop_fleet()
        verdicts = self._verdicts(final, churn, leases)
        report = as_json(
            schedule=self.schedule,
            verdicts=verdicts,
            faults=injector.records,
            churn=churn,
            fleet=self.fleet,
            settle_seconds=settled,
            workdir=str(self.cluster.dir),
        )
        report["sockets"] = sockets
        await self._write(report, api, requests)
        self._print(report, verdicts, injector, churn)
        return 0 if report["passed"] else 1

    async def _churn(self, churn: Churn) -> None:
        begun = asyncio.get_running_loop().time()
        for step in self.schedule.churn:
            await asyncio.sleep(max(0.0, begun + step.at - asyncio.get_running_loop().time()))
            await churn.retry_waiting()
            await churn.apply(step)
        await asyncio.sleep(max(0.0, begun + self.schedule.duration - asyncio.get_running_loop().time()))

    async def _faults(self, injector: Injector) -> None:
        begun = asyncio.get_running_loop().time()
        async with asyncio.TaskGroup() as group:
            for step in self.schedule.faults:
                await asyncio.sleep(max(0.0, begun + step.at - asyncio.get_running_loop().time()))
                group.create_task(injector.inject(step), name=f"inject {step.kind}")

    async def _progress(self, churn: Churn, injector: Injector, observer: Observer) -> None:
        while True:
            await asyncio.sleep(self.options.progress)
            self.say(progress(churn, injector.records, self.fleet, observer.latest))

    def _verdicts(self, snap: Snapshot, churn: Churn, leases: LeaseTracker) -> list[inv.Verdict]:
        alive = {name: self.fleet.alive(name) or name in self._stopped for name in self.fleet.names}
        return [
            inv.claims_bound(snap),
            inv.volumes_accounted(snap),
            inv.nothing_stuck(snap),
            inv.attachments_match(snap),
            inv.capacity_matches(snap, churn.records.values()),
            inv.no_crash_loop(self.fleet.exits, self.fleet.restarts()),
            inv.leases_live(snap, leases.worst, alive),
        ]

    async def _settle(
        self, observer: Observer, churn: Churn, leases: LeaseTracker
    ) -> tuple[float, Snapshot | None]:
        begun = time.monotonic()
        streak = 0
        while time.monotonic() - begun < self.options.settle:
            try:
                snap = await observer.once()
            except Exception:
                await asyncio.sleep(1.0)
                continue
            held = all(v.held for v in self._verdicts(snap, churn, leases)[:5])
            streak = streak + 1 if held else 0
            if streak >= 2:
                return time.monotonic() - begun, snap
            await asyncio.sleep(1.0)
        return time.monotonic() - begun, None

    def _sockets(self) -> dict[str, str]:
        """Every unix socket in the work directory (driver, registration) and its permission bits."""
        found = {}
        for path in sorted(self.cluster.dir.rglob("*")):
            with contextlib.suppress(OSError):
                mode = path.lstat().st_mode
                if stat.S_ISSOCK(mode):
                    found[str(path.relative_to(self.cluster.dir))] = oct(stat.S_IMODE(mode))
        return found

    async def _scrape_metrics(self) -> None:
        directory = self.cluster.dir / "metrics"
        directory.mkdir(exist_ok=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for name, port in self.fleet.http_ports.items():
                for _ in range(50):  # a replica restarted a moment ago may not listen yet
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
                            (directory / f"{name}.txt").write_text(await answer.text())
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)

    async def _stop_fleet(self) -> None:
        names = self.fleet.names
        self._stopped = set(names)
        await asyncio.gather(*(self.fleet.terminate_for_good(name) for name in names))

    async def _write(self, report: dict[str, object], api: Api, requests: RequestCollector) -> None:
        if self.options.workdir is None:
            return
        directory = self.cluster.dir
        (directory / "report.json").write_text(json.dumps(report, indent=2))
        (directory / "schedule.txt").write_text("\n".join(self.schedule.lines()) + "\n")
        (directory / "requests.json").write_text(json.dumps(requests.records))
        (directory / "secret-values.txt").write_text("\n".join(self.secret.values) + "\n")
        events = await api.items(EVENTS)
        (directory / "events.json").write_text(json.dumps(events))

    def _print(
        self, report: dict[str, object], verdicts: list[inv.Verdict], injector: Injector, churn: Churn
    ) -> None:
        lines = [
            "",
            f"chaos soak: seed {self.schedule.seed}, {self.schedule.duration:.0f}s, "
            f"schedule {self.schedule.digest()}",
        ]
        lines += ["faults:", *fault_lines(injector.records)]
        lines += ["invariants:", *verdict_lines(verdicts)]
        lines += ["faults per kind:", *tally_lines(tally(injector.records))]
        lines += ["operations:", *operation_lines(churn)]
        lines.append(
            f"result: {'PASS' if report['passed'] else 'FAIL'} "
            f"(logs: {self.cluster.dir if self.options.workdir else 'removed'})"
        )
        print("\n".join(lines), flush=True)


def header(schedule: Schedule, options: Options) -> str:
    return (
        f"chaos soak: seed {schedule.seed}, {schedule.duration:.0f}s of churn "
        f"({len(schedule.churn)} steps at {options.churn_rate:g}/s) and {len(schedule.faults)} faults, "
        f"schedule {schedule.digest()}\n"
        f"controller sidecars: 2 replicas each, {' '.join(SOAK_FLAGS)}"
    )


async def soak(options: Options) -> int:
    """Run one soak (see the module docstring); 0 when every invariant held."""
    schedule = draw(options.seed, options.duration, churn_rate=options.churn_rate)
    print(header(schedule, options), flush=True)
    return await Soak(options, schedule).run()
