"""Runtime.run_groups: one elector per group, informers started by the first group that leads with them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from common.metrics import Metrics
from common.runtime import ControllerGroup, Runtime, StandardConfig, _first_unhealthy

ELECTING = StandardConfig(leader_election=True)


class FakeInformer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.resync = 0.0
        self.runs = 0
        self._synced = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        self._synced.set()
        await asyncio.Event().wait()

    async def run_resync(self) -> None:
        await asyncio.Event().wait()

    async def wait_synced(self) -> None:
        await self._synced.wait()


class FakeController:
    def __init__(self, name: str, informers: list[FakeInformer]) -> None:
        self.name = name
        self.informers = informers
        self.started = asyncio.Event()
        self.saw_synced: bool | None = None

    async def run(self) -> None:
        self.saw_synced = all(i._synced.is_set() for i in self.informers)
        self.started.set()
        await asyncio.Event().wait()


class FakeElector:
    """Leads when the test grants it; records how the runtime made it."""

    def __init__(self, lock_name: str, config: StandardConfig, status_name: str) -> None:
        self.lock_name = lock_name
        self.config = config
        self.status_name = status_name
        self.granted = asyncio.Event()
        self.leading = False

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        await self.granted.wait()
        self.leading = True
        try:
            await lead()
        finally:
            self.leading = False

    async def healthz(self) -> tuple[int, str]:
        return 200, "ok"


class FakeCSI:
    async def watch_connection(self) -> None:
        await asyncio.Event().wait()


def runtime(config: StandardConfig = ELECTING) -> tuple[Runtime, dict[str, FakeElector]]:
    rt = Runtime(
        program="test",
        config=config,
        metrics=Metrics(),
        csi=FakeCSI(),  # type: ignore[arg-type]
        kube=None,  # type: ignore[arg-type]
        election_client=None,  # type: ignore[arg-type]
        factory=None,  # type: ignore[arg-type]
        driver_name="hostpath.csi.k8s.io",
    )
    electors: dict[str, FakeElector] = {}

    def elector(lock_name: str, *, config: StandardConfig, status_name: str) -> FakeElector:
        electors[lock_name] = FakeElector(lock_name, config, status_name)
        return electors[lock_name]

    rt.elector = elector  # type: ignore[method-assign,assignment]
    return rt, electors


def group(lock: str, controller: FakeController, config: StandardConfig = ELECTING) -> ControllerGroup:
    return ControllerGroup(
        lock_name=lock,
        controllers=[controller],
        informers=controller.informers,  # type: ignore[arg-type]
        config=config,
    )


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_informers_start_with_the_first_group_that_leads_and_are_shared() -> None:
    pvs, claims, vas = FakeInformer("persistentvolumes"), FakeInformer("claims"), FakeInformer("vas")
    provisioner = FakeController("provisioner", [pvs, claims])
    attacher = FakeController("attacher", [pvs, vas])
    rt, electors = runtime()
    task = asyncio.create_task(
        rt.run_groups(
            [group("hostpath.csi.k8s.io", provisioner), group("external-attacher-leader-x", attacher)]
        ),
        name="run_groups",
    )
    try:
        await asyncio.sleep(0)
        assert set(electors) == {"hostpath.csi.k8s.io", "external-attacher-leader-x"}
        assert (pvs.runs, claims.runs, vas.runs) == (0, 0, 0)  # nobody leads: nothing is watched

        electors["external-attacher-leader-x"].granted.set()
        await asyncio.wait_for(attacher.started.wait(), 1)
        assert attacher.saw_synced
        assert (pvs.runs, claims.runs, vas.runs) == (1, 0, 1)
        assert not provisioner.started.is_set()

        electors["hostpath.csi.k8s.io"].granted.set()
        await asyncio.wait_for(provisioner.started.wait(), 1)
        assert provisioner.saw_synced
        assert (pvs.runs, claims.runs, vas.runs) == (1, 1, 1)  # the shared PV informer did not start twice
        assert all(e.leading for e in electors.values())
    finally:
        await stop(task)
    assert not any(e.leading for e in electors.values())


async def test_one_elector_per_electing_group_with_its_own_config_and_status_label() -> None:
    attacher_config = StandardConfig(leader_election=True, lease_duration=30.0, renew_deadline=20.0)
    plain = FakeController("resizer", [FakeInformer("pvcs")])
    electing = FakeController("attacher", [FakeInformer("vas")])
    rt, electors = runtime()
    groups = [
        group("external-resizer-x", plain, StandardConfig(leader_election=False)),
        group("external-attacher-leader-hostpath.csi.k8s.io", electing, attacher_config),
    ]
    task = asyncio.create_task(rt.run_groups(groups), name="run_groups")
    try:
        await asyncio.wait_for(plain.started.wait(), 1)  # no election: runs at once
        assert list(electors) == ["external-attacher-leader-hostpath.csi.k8s.io"]
        elector = electors["external-attacher-leader-hostpath.csi.k8s.io"]
        assert elector.config is attacher_config
        assert elector.status_name == "external-attacher-leader-hostpath-csi-k8s-io"  # the Lease's name
        assert not electing.started.is_set()
    finally:
        await stop(task)


async def test_once_runs_every_groups_controllers_in_one_pass() -> None:
    rt, electors = runtime(StandardConfig(leader_election=True, once=True))
    seen: list[tuple[str, list[str]]] = []

    async def run(*, lock_name: str, controllers: list[FakeController]) -> None:
        seen.append((lock_name, [c.name for c in controllers]))

    rt.run = run  # type: ignore[method-assign,assignment]
    first, second = FakeController("claims", []), FakeController("csi-attacher", [])
    await rt.run_groups([group("a", first), group("b", second)])
    assert seen == [("", ["claims", "csi-attacher"])]
    assert electors == {}


class Health:
    def __init__(self, code: int, text: str) -> None:
        self.answer = (code, text)

    async def healthz(self) -> tuple[int, str]:
        return self.answer


async def test_leader_election_health_fails_when_any_lease_fails() -> None:
    assert await _first_unhealthy([Health(200, "ok"), Health(200, "ok")]) == (200, "ok")  # type: ignore[list-item]
    stale = (500, "internal server error: failed election to renew leadership on lease b")
    assert await _first_unhealthy([Health(200, "ok"), Health(*stale)]) == stale  # type: ignore[list-item]
