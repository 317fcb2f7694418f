"""The control plane: a chosen set of stand-ins running on one Store, and a whole test bed around them.

::

    async with ControlPlane(store, ["pv", "attachdetach"]) as plane:      # any subset, by name
        await plane.wait_synced()
        ...
    async with start_testbed(TestbedOptions(controllers=("all",), registration_dir=d)) as bed:
        bed.server.url, bed.server.kubeconfig, bed.plane["kubelet"]

Names are kube-controller-manager's where there is one: `persistentvolume-binder`, `pvc-protection`,
`pv-protection`, `attachdetach`; plus `scheduler` and `kubelet`. Aliases: `pv` (the binder and both
protection controllers, what lets provisioning and deletion complete) and `all`.

Each stand-in runs as one task named `testbed <name>`; `stop()` cancels them and raises if one of
them had crashed, so a test cannot pass over a dead controller. `add()` runs one more (a second
node: `plane.add(Kubelet(store, KubeletConfig(node_name="node-2")), "kubelet node-2")`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from testbed.apiserver import ApiServer, ApiServerOptions, Store
from testbed.controllers.attachdetach import AttachDetachController
from testbed.controllers.base import Controller
from testbed.controllers.kubelet import Kubelet, KubeletConfig
from testbed.controllers.persistentvolume import PersistentVolumeController
from testbed.controllers.protection import PVCProtectionController, PVProtectionController
from testbed.controllers.scheduler import VolumeScheduler

log = structlog.get_logger(__name__)

CONTROLLER_NAMES = (
    "persistentvolume-binder",
    "pvc-protection",
    "pv-protection",
    "scheduler",
    "attachdetach",
    "kubelet",
)
ALIASES = {"pv": CONTROLLER_NAMES[:3], "all": CONTROLLER_NAMES}


def expand_names(names: Iterable[str]) -> list[str]:
    """Controller names with aliases expanded, in a stable order; ValueError for an unknown name."""
    wanted: set[str] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in CONTROLLER_NAMES:
            wanted.add(name)
        else:
            known = ", ".join([*CONTROLLER_NAMES, *ALIASES])
            raise ValueError(f"unknown controller {name!r} (known: {known})")
    return [n for n in CONTROLLER_NAMES if n in wanted]


class ControlPlane:
    """Starts the named stand-ins on `store` as named tasks and stops them.

    `kubelet` configures the kubelet stand-in; `default_node` makes the scheduler place pods that have
    no `spec.nodeName`; `resync_period` is every controller's periodic resync, in seconds.
    """

    def __init__(
        self,
        store: Store,
        controllers: Iterable[str] = ("all",),
        *,
        kubelet: KubeletConfig | None = None,
        default_node: str | None = None,
        resync_period: float = 15.0,
    ) -> None:
        self.store = store
        builders: dict[str, Callable[[], Controller]] = {
            "persistentvolume-binder": lambda: PersistentVolumeController(store, resync_period=resync_period),
            "pvc-protection": lambda: PVCProtectionController(store, resync_period=resync_period),
            "pv-protection": lambda: PVProtectionController(store, resync_period=resync_period),
            "scheduler": lambda: VolumeScheduler(
                store, default_node=default_node, resync_period=resync_period
            ),
            "attachdetach": lambda: AttachDetachController(store, resync_period=resync_period),
            "kubelet": lambda: Kubelet(store, kubelet, resync_period=resync_period),
        }
        self.controllers: dict[str, Controller] = {
            name: builders[name]() for name in expand_names(controllers)
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def __getitem__(self, name: str) -> Controller:
        return self.controllers[name]

    def add(self, controller: Controller, name: str | None = None) -> Controller:
        """Run one more stand-in (a second node's kubelet, a custom controller), started with the rest
        or at once if the plane is running. Returns it."""
        name = name or controller.name
        if name in self.controllers:
            raise ValueError(f"a controller named {name!r} is already in the plane")
        self.controllers[name] = controller
        if self._started:
            self._tasks[name] = asyncio.create_task(controller.run(), name=f"testbed {name}")
        return controller

    @property
    def kubelet(self) -> Kubelet:
        kubelet = self.controllers["kubelet"]
        assert isinstance(kubelet, Kubelet)
        return kubelet

    async def start(self) -> None:
        for name, controller in self.controllers.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(controller.run(), name=f"testbed {name}")
        self._started = True
        log.info("control plane started", controllers=list(self.controllers))

    async def wait_synced(self) -> None:
        """Wait until every stand-in has listed what it watches (its caches are primed)."""
        for name, controller in self.controllers.items():
            for informer in controller.informers.values():
                waiter = asyncio.create_task(informer.synced.wait(), name=f"testbed {name} synced")
                task = self._tasks[name]
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if task.done():
                    task.result()

    async def stop(self) -> None:
        """Cancel every stand-in; raise the first error of one that had crashed."""
        tasks, self._tasks = self._tasks, {}
        self._started = False
        crashed = [t for t in tasks.values() if t.done() and not t.cancelled() and t.exception()]
        for task in tasks.values():
            task.cancel("control plane stopped")
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        log.info("control plane stopped")
        if crashed:
            error = crashed[0].exception()
            raise RuntimeError(f"controller task {crashed[0].get_name()!r} crashed: {error!r}") from error

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, kw_only=True)
class TestbedOptions:
    """An API server and the stand-ins around it (the `python -m testbed.controllers` flags)."""

    __test__ = False

    host: str = "127.0.0.1"
    """Address the API server listens on."""
    port: int = 0
    """API server port; 0 picks a free one."""
    tls: bool = False
    """Serve HTTPS with a generated CA and a bearer token (in the kubeconfig)."""
    kubeconfig_out: str | None = None
    """Where to write the kubeconfig; a private temporary file when None."""
    controllers: tuple[str, ...] = ("all",)
    """Which stand-ins to run (names or aliases)."""
    node_name: str = "node-1"
    """The kubelet's node."""
    registration_dir: Path | None = None
    """The kubelet's plugin registration directory."""
    csi_endpoint: str | None = None
    """The driver's CSI endpoint (see `KubeletConfig.csi_endpoint`)."""
    root_dir: str = "/var/lib/kubelet"
    """The kubelet's root directory (only used in the paths sent to the driver)."""
    schedule_pods: bool = False
    """Let the scheduler place pods without `spec.nodeName` on `node_name`."""
    resync_period: float = 15.0
    """Periodic resync of every stand-in, seconds."""
    bookmark_interval: float = 60.0
    """The API server's watch bookmark interval, seconds."""


@dataclass(frozen=True)
class Testbed:
    """A running test bed."""

    __test__ = False

    server: ApiServer
    plane: ControlPlane


@asynccontextmanager
async def start_testbed(options: TestbedOptions | None = None) -> AsyncIterator[Testbed]:
    """Run an API server and the chosen stand-ins on its store until the block exits."""
    opts = options or TestbedOptions()
    server_options = ApiServerOptions(
        host=opts.host,
        port=opts.port,
        tls=opts.tls,
        kubeconfig=opts.kubeconfig_out,
        bookmark_interval=opts.bookmark_interval,
    )
    kubelet = KubeletConfig(
        node_name=opts.node_name,
        registration_dir=opts.registration_dir,
        csi_endpoint=opts.csi_endpoint,
        root_dir=opts.root_dir,
    )
    async with ApiServer(server_options) as server:
        plane = ControlPlane(
            server.store,
            opts.controllers,
            kubelet=kubelet,
            default_node=opts.node_name if opts.schedule_pods else None,
            resync_period=opts.resync_period,
        )
        async with plane:
            await plane.wait_synced()
            yield Testbed(server, plane)


async def run_testbed(
    options: TestbedOptions | None = None,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[Testbed], Any] | None = None,
) -> None:
    """Run a test bed until `stop` is set; `on_ready(testbed)` is called once it serves."""
    async with start_testbed(options) as bed:
        if on_ready is not None:
            on_ready(bed)
        await stop.wait()
