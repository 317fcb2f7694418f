"""The test driver: one in-memory CSI plugin serving Identity, Controller and Node on a unix socket.

Lifecycle: `start()` binds the socket and serves; `stop()` stops serving and removes the socket;
`crash()` does what a killed driver container does (in-flight calls fail, the socket disappears) and
optionally comes back after a while; `restart()` is a crash followed by an immediate start. The
backend (`state`: volumes, snapshots, attachments) survives all of these unless told to lose it, as
real storage survives its driver's restarts. The configuration (`config`), readiness (`ready`),
fault rules (`faults`) and call log (`calls`) can be changed or inspected at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import fields
from typing import Any

import grpc
import structlog

from testbed.csidriver.calls import CallLog
from testbed.csidriver.config import DriverConfig
from testbed.csidriver.controller import ControllerService
from testbed.csidriver.faults import Fault, Faults
from testbed.csidriver.identity import IdentityService
from testbed.csidriver.node import NodeService
from testbed.csidriver.server import Dispatcher, build_server, socket_path
from testbed.csidriver.state import DriverState, Snapshot, Volume

log = structlog.get_logger(__name__)


def _remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class TestDriver:
    """A CSI driver for tests, with fault injection and full visibility of its state.

    ::

        driver = TestDriver(DriverConfig(controller_capabilities=frozenset({"CREATE_DELETE_VOLUME"})))
        async with driver.serve(f"unix://{tmp_path}/csi.sock"):
            driver.faults.add("CreateVolume", "error", code=grpc.StatusCode.RESOURCE_EXHAUSTED, count=1)
            ...
            assert driver.calls.counts["CreateVolume"] == 2
            assert [v.name for v in driver.volumes.values()] == ["pvc-1"]
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, config: DriverConfig | None = None, *, endpoint: str | None = None) -> None:
        self.config = config or DriverConfig()
        """The current configuration; replace it (`dataclasses.replace`) to change behaviour live."""
        self.state = DriverState()
        """The backend: volumes, snapshots, attachments and node mounts."""
        self.ready: bool | None = self.config.ready
        """What Probe answers: True/False, or None for no `ready` field."""
        self.faults = Faults()
        """The active fault rules."""
        self.calls = CallLog(self.config.call_log_size)
        """Every call received, with its result."""
        self.endpoint = endpoint
        """The CSI endpoint ("unix:///path/csi.sock") served on."""
        self.starts = 0
        """How many times the server came up (1 + restarts)."""
        self.crashes = 0
        """How many times the driver crashed (fault or `crash()`)."""
        self._services = {
            "Identity": IdentityService(self),
            "Controller": ControllerService(self),
            "Node": NodeService(self),
        }
        self._dispatcher = Dispatcher(self)
        self._server: grpc.aio.Server | None = None
        self._up = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- state views ---

    @property
    def volumes(self) -> dict[str, Volume]:
        """Volumes by id (live view of the backend)."""
        return self.state.volumes

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        """Snapshots by id (live view of the backend)."""
        return self.state.snapshots

    @property
    def publications(self) -> dict[str, list[str]]:
        """Volume id → the node ids it is ControllerPublished to."""
        return self.state.published_nodes()

    @property
    def serving(self) -> bool:
        """True while the gRPC server is up."""
        return self._server is not None

    @property
    def address(self) -> str:
        """The endpoint as a grpc target ("unix:///abs/path")."""
        if self.endpoint is None:
            raise RuntimeError("the driver has no endpoint yet")
        return f"unix://{socket_path(self.endpoint)}"

    def dump(self) -> dict[str, Any]:
        """Everything observable, JSON-friendly (the control endpoint's GET /state)."""
        config = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
        config["nodes"] = {k: dict(v) for k, v in self.config.nodes.items()}
        for key in ("controller_capabilities", "node_capabilities", "accepted_mutable_parameters"):
            config[key] = sorted(config[key])
        return {
            **self.state.as_dict(),
            "serving": self.serving,
            "endpoint": self.endpoint,
            "ready": self.ready,
            "starts": self.starts,
            "crashes": self.crashes,
            "counts": dict(self.calls.counts),
            "faults": [f.as_dict() for f in self.faults],
            "config": config,
        }

    # --- lifecycle ---

    async def start(self, endpoint: str | None = None) -> None:
        """Serve on `endpoint` (or the one given before); no-op when already serving."""
        self.endpoint = endpoint or self.endpoint
        if self.endpoint is None:
            raise ValueError("no endpoint to serve on")
        async with self._lock:
            if self._server is not None:
                return
            server = build_server(self.endpoint, self._dispatcher, self._services)
            await server.start()
            self._server = server
            self.starts += 1
            self._up.set()
        log.info("test driver serving", endpoint=self.endpoint, driver=self.config.name)

    async def stop(self) -> None:
        """Stop serving for good: cancel a pending restart, close the server (in-flight calls get
        0.1 s to finish), remove the socket."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel("test driver stopped")
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._go_down(grace=0.1)

    async def crash(self, *, restart_after: float | None = None, keep_state: bool = True) -> None:
        """Go down now like a killed driver: in-flight calls fail, the socket is removed.

        With `restart_after`, serve again on the same socket that many seconds later (in the
        background); otherwise stay down until `start()`/`restart()`. Without `keep_state` the
        volumes and snapshots are lost.
        """
        self.crashes += 1
        log.info(
            "test driver crashing", endpoint=self.endpoint, restart_after=restart_after, keep_state=keep_state
        )
        await self._go_down()
        if not keep_state:
            self._lose_state()
        if restart_after is not None:
            self._spawn(self._start_after(restart_after), name="csidriver restart")

    async def restart(self, *, keep_state: bool = True, down_for: float = 0.0) -> None:
        """Go down and come back on the same socket (after `down_for` seconds)."""
        await self._go_down()
        if not keep_state:
            self._lose_state()
        if down_for > 0:
            await asyncio.sleep(down_for)
        await self.start()

    async def wait_serving(self) -> None:
        """Wait until the server is up (e.g. after a crash); bound it with `asyncio.timeout`."""
        await self._up.wait()

    @asynccontextmanager
    async def serve(self, endpoint: str | None = None) -> AsyncIterator[TestDriver]:
        """`start()` on enter, `stop()` on exit."""
        await self.start(endpoint)
        try:
            yield self
        finally:
            await self.stop()

    def crash_soon(self, fault: Fault) -> None:
        """Crash from inside an RPC (a CRASH fault): done in another task, as the RPC gets cancelled."""
        crash = self.crash(restart_after=fault.restart_after, keep_state=fault.keep_state)
        self._spawn(crash, name="csidriver crash")

    async def _start_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.start()

    async def _go_down(self, grace: float | None = None) -> None:
        """Stop the server (cancelling in-flight calls after `grace` seconds) and remove the socket."""
        async with self._lock:
            self._up.clear()
            if self._server is not None:
                await self._server.stop(grace)
                self._server = None
                log.info("test driver stopped serving", endpoint=self.endpoint)
            if self.endpoint is not None:
                _remove_socket(socket_path(self.endpoint))

    def _lose_state(self) -> None:
        old = self.state
        self.state = DriverState(
            next_volume=old.next_volume, next_snapshot=old.next_snapshot, next_device=old.next_device
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("test driver task failed", task=task.get_name(), error=repr(task.exception()))
