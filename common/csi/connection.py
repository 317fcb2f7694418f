"""The CSI connection: one grpc.aio channel to the driver, shared by the whole process.

`CSIConnection.connect(address, ...)` waits for the driver's socket to appear and for the channel to
be READY, logging "still connecting to CSI driver" every 10 s, and gives up with `CSIConnectError`
after `connect_timeout` (30 s in the Go sidecars; livenessprobe waits forever: None). Calls go
through the generated stubs (`identity`, `controller`, `node`, `group_controller`) over a channel
carrying the `CallInterceptor` (metrics and the `--v=5` trace). The typed helpers below cover the
discovery calls every sidecar makes at startup: `probe_forever`, `plugin_info`, `*_capabilities`
(asked once, cached), `node_info`.

Reconnecting goes beyond upstream, which exits 1 when an established connection drops
(csi-lib-utils `ExitOnConnectionLoss`). `watch_connection()` runs as a named task for the life of
the process: when the connection drops it logs "lost connection to CSI driver", waits for the
driver to come back (gRPC redials with at most 1 s backoff, as upstream configures), re-reads
plugin info and the capabilities asked for so far, counts the reconnect, and awaits the
`on_reconnect` callbacks so controllers can resync. A driver that comes back under another name
raises `DriverChangedError`: this process serves the old driver, so it must exit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import grpc

from common.csi.errors import call_failed, describe, status_code
from common.csi.interceptor import UNKNOWN_DRIVER, CallInterceptor, OperationRecorder
from common.errors import CSIConnectError, CSIError, DriverChangedError
from common.logging import get_logger
from proto import csi_pb2, csi_pb2_grpc

log = get_logger(__name__)

LOG_INTERVAL = 10.0
"""Seconds between "still connecting" lines (csi-lib-utils connectionLoggingInterval)."""
PROBE_INTERVAL = 1.0
"""Seconds between Probe calls in `probe_forever` (csi-lib-utils probeInterval)."""
PROBE_LOG_INTERVAL = 5.0
"""At most one "not ready yet" line per this many seconds while probing."""
SOCKET_POLL = 0.1
"""Seconds between looks for a unix socket that does not exist yet."""

_READY = grpc.ChannelConnectivity.READY
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Redial quickly after a failure, never waiting more than 1 s (grpc.WithBackoffMaxDelay(1s)).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Never go IDLE on our own: a channel that leaves READY has lost its driver.
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
]
_UNIX_OPTIONS: list[tuple[str, Any]] = [("grpc.default_authority", "localhost")]

ReconnectCallback = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class PluginInfo:
    """The driver's GetPluginInfo answer."""

    name: str
    vendor_version: str
    manifest: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeInfo:
    """The driver's NodeGetInfo answer."""

    node_id: str
    max_volumes_per_node: int
    accessible_topology: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """Where the driver listens: a unix socket path, or host:port for debugging."""

    target: str
    """What gRPC dials, e.g. "unix:///csi/csi.sock" or "localhost:10000"."""
    socket_path: str | None
    """The unix socket file, or None for TCP."""


def parse_address(address: str) -> Endpoint:
    """`/abs/path`, `unix:///abs/path` and `unix:/abs/path` are unix sockets; anything else is TCP."""
    if address.startswith("unix://"):
        path = address.removeprefix("unix://")
    elif address.startswith("unix:"):
        path = address.removeprefix("unix:")
    elif address.startswith("/"):
        path = address
    else:
        return Endpoint(target=address, socket_path=None)
    target = f"unix://{path}" if path.startswith("/") else f"unix:{path}"
    return Endpoint(target=target, socket_path=path)


def _socket_exists(path: str | None) -> bool:
    return path is None or os.path.exists(path)


def _enum_names(enum_type: Any, numbers: list[int]) -> frozenset[str]:
    names = set()
    for number in numbers:
        value = enum_type.DESCRIPTOR.values_by_number.get(number)
        names.add(value.name if value is not None else str(number))
    return frozenset(names)


class CSIConnection:
    """One channel to the CSI driver; create it with `await CSIConnection.connect(...)`."""

    def __init__(
        self,
        address: str,
        *,
        call_timeout: float | None,
        recorder: OperationRecorder | None = None,
        max_log_length: int = -1,
    ) -> None:
        self.address = address
        self.endpoint = parse_address(address)
        self.call_timeout = call_timeout
        """Per-call timeout in seconds for the helpers here (`--timeout`); None: no deadline."""
        self.driver_name = ""
        """The driver's name once `plugin_info()` has answered; metrics say "unknown-driver" until then."""
        self.reconnects = 0
        """How many times the connection was lost and re-established."""
        self._recorder = recorder
        self._caps: dict[str, frozenset[str]] = {}
        self._callbacks: list[ReconnectCallback] = []
        self._closed = False
        interceptor = CallInterceptor(
            driver_name=lambda: self.driver_name or UNKNOWN_DRIVER,
            recorder=recorder,
            max_log_length=max_log_length,
        )
        options = _CHANNEL_OPTIONS + (_UNIX_OPTIONS if self.endpoint.socket_path is not None else [])
        self._channel = grpc.aio.insecure_channel(
            self.endpoint.target, options=options, interceptors=[cast(Any, interceptor)]
        )
        self.identity = csi_pb2_grpc.IdentityStub(self._channel)
        self.controller = csi_pb2_grpc.ControllerStub(self._channel)
        self.node = csi_pb2_grpc.NodeStub(self._channel)
        self.group_controller = csi_pb2_grpc.GroupControllerStub(self._channel)

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        call_timeout: float | None,
        connect_timeout: float | None = 30.0,
        recorder: OperationRecorder | None = None,
        max_log_length: int = -1,
    ) -> CSIConnection:
        """Dial `address` and wait until the driver answers; CSIConnectError after `connect_timeout`."""
        conn = cls(address, call_timeout=call_timeout, recorder=recorder, max_log_length=max_log_length)
        log.info("connecting to CSI driver", address=address)
        try:
            loop = asyncio.get_running_loop()
            deadline = None if connect_timeout is None else loop.time() + connect_timeout
            if not await conn._wait_for_ready(deadline):
                raise conn._connect_error(connect_timeout)
        except BaseException:
            await conn.close()
            raise
        log.info("connected to CSI driver", address=address, v=2)
        return conn

    def _connect_error(self, timeout: float | None) -> CSIConnectError:
        path = self.endpoint.socket_path
        if not _socket_exists(path):
            return CSIConnectError(f"CSI driver socket {path} did not appear within {timeout}s")
        state = self._channel.get_state().name
        return CSIConnectError(
            f"CSI driver at {self.address} did not become ready within {timeout}s (channel {state})"
        )

    async def _wait_for_ready(self, deadline: float | None) -> bool:
        """Wait for the socket file, then for READY; False when `deadline` (loop time) passes first."""
        loop = asyncio.get_running_loop()
        next_log = loop.time() + LOG_INTERVAL
        while not self._closed:
            wake_at = next_log if deadline is None else min(next_log, deadline)
            try:
                async with asyncio.timeout_at(wake_at):
                    if not _socket_exists(self.endpoint.socket_path):
                        await asyncio.sleep(SOCKET_POLL)
                        continue
                    state = self._channel.get_state(try_to_connect=True)
                    if state is _READY:
                        return True
                    if state is _SHUTDOWN:
                        return False
                    await self._channel.wait_for_state_change(state)
            except TimeoutError:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return False
                if now >= next_log:
                    log.warning("still connecting to CSI driver", address=self.address)
                    next_log = now + LOG_INTERVAL
        return False

    async def _call(self, method: str, rpc: Any, request: Any) -> Any:
        try:
            return await rpc(request, timeout=self.call_timeout)
        except grpc.RpcError as error:
            raise call_failed(method, error) from error

    # ------------------------------------------------------------------ discovery helpers

    async def probe(self) -> bool:
        """One Identity.Probe: True when ready (an unset `ready` counts as ready)."""
        rsp = await self._call("Probe", self.identity.Probe, csi_pb2.ProbeRequest())
        return not rsp.HasField("ready") or bool(rsp.ready.value)

    async def probe_forever(self) -> None:
        """Probe every second until the driver is ready (upstream ProbeForever).

        DeadlineExceeded, Unavailable and `ready=false` mean "not yet"; any other error raises
        CSIError.
        """
        loop = asyncio.get_running_loop()
        log.info("probing CSI driver for readiness", address=self.address)
        last_log: float | None = None
        while True:
            try:
                rsp = await self.identity.Probe(csi_pb2.ProbeRequest(), timeout=self.call_timeout)
            except grpc.RpcError as error:
                if status_code(error) not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise CSIError(f"CSI driver probe failed: {describe(error)}") from error
                reason = describe(error)
            else:
                if not rsp.HasField("ready") or rsp.ready.value:
                    return
                reason = "driver responded but is not ready"
            now = loop.time()
            if last_log is None or now - last_log >= PROBE_LOG_INTERVAL:
                log.warning("CSI driver is not ready yet", address=self.address, reason=reason)
                last_log = now
            await asyncio.sleep(PROBE_INTERVAL)

    async def _fetch_plugin_info(self) -> PluginInfo:
        rsp = await self._call("GetPluginInfo", self.identity.GetPluginInfo, csi_pb2.GetPluginInfoRequest())
        if not rsp.name:
            raise CSIError("GetPluginInfo failed: driver name is empty")
        return PluginInfo(name=rsp.name, vendor_version=rsp.vendor_version, manifest=dict(rsp.manifest))

    async def plugin_info(self) -> PluginInfo:
        """GetPluginInfo; sets `driver_name` (DriverChangedError if it was known and differs)."""
        info = await self._fetch_plugin_info()
        if self.driver_name and info.name != self.driver_name:
            raise DriverChangedError(f"CSI driver name changed from {self.driver_name} to {info.name}")
        self.driver_name = info.name
        return info

    async def plugin_capabilities(self) -> frozenset[str]:
        """Plugin service types and volume expansion types, e.g. {"CONTROLLER_SERVICE", "ONLINE"}."""
        return await self._capabilities("plugin")

    async def controller_capabilities(self) -> frozenset[str]:
        """Controller RPC capabilities, e.g. {"CREATE_DELETE_VOLUME", "MODIFY_VOLUME"}."""
        return await self._capabilities("controller")

    async def node_capabilities(self) -> frozenset[str]:
        """Node RPC capabilities, e.g. {"STAGE_UNSTAGE_VOLUME", "EXPAND_VOLUME"}."""
        return await self._capabilities("node")

    async def _capabilities(self, kind: str) -> frozenset[str]:
        cached = self._caps.get(kind)
        if cached is None:
            cached = await self._query_capabilities(kind)
            self._caps[kind] = cached
        return cached

    async def _query_capabilities(self, kind: str) -> frozenset[str]:
        if kind == "plugin":
            rsp = await self._call(
                "GetPluginCapabilities",
                self.identity.GetPluginCapabilities,
                csi_pb2.GetPluginCapabilitiesRequest(),
            )
            services = [c.service.type for c in rsp.capabilities if c.WhichOneof("type") == "service"]
            expansion = [
                c.volume_expansion.type
                for c in rsp.capabilities
                if c.WhichOneof("type") == "volume_expansion"
            ]
            return _enum_names(csi_pb2.PluginCapability.Service.Type, services) | _enum_names(
                csi_pb2.PluginCapability.VolumeExpansion.Type, expansion
            )
        if kind == "controller":
            rsp = await self._call(
                "ControllerGetCapabilities",
                self.controller.ControllerGetCapabilities,
                csi_pb2.ControllerGetCapabilitiesRequest(),
            )
            rpc_types: Any = csi_pb2.ControllerServiceCapability.RPC.Type
        else:
            rsp = await self._call(
                "NodeGetCapabilities", self.node.NodeGetCapabilities, csi_pb2.NodeGetCapabilitiesRequest()
            )
            rpc_types = csi_pb2.NodeServiceCapability.RPC.Type
        return _enum_names(rpc_types, [c.rpc.type for c in rsp.capabilities if c.WhichOneof("type") == "rpc"])

    async def node_info(self) -> NodeInfo:
        """NodeGetInfo: the node ID, the volume limit and the node's topology segments."""
        rsp = await self._call("NodeGetInfo", self.node.NodeGetInfo, csi_pb2.NodeGetInfoRequest())
        return NodeInfo(
            node_id=rsp.node_id,
            max_volumes_per_node=rsp.max_volumes_per_node,
            accessible_topology=dict(rsp.accessible_topology.segments),
        )

    # ------------------------------------------------------------------ reconnecting

    @property
    def connected(self) -> bool:
        """Whether the channel is READY now (then an UNAVAILABLE answer came from the driver itself)."""
        return self._channel.get_state() is _READY

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Await `callback()` after every reconnect (e.g. to resync a controller)."""
        self._callbacks.append(callback)

    async def _until_lost(self) -> None:
        state = self._channel.get_state()
        while state is _READY and not self._closed:
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state()

    async def _refresh(self) -> None:
        """Re-read plugin info and every capability asked for so far, after a reconnect."""
        asked = list(self._caps)
        self._caps.clear()
        info = await self._fetch_plugin_info()
        if self.driver_name and info.name != self.driver_name:
            raise DriverChangedError(
                f"CSI driver at {self.address} came back as {info.name}, not {self.driver_name}"
            )
        self.driver_name = info.name
        for kind in asked:
            await self._capabilities(kind)

    async def watch_connection(self) -> None:
        """Run for the life of the process: notice a lost connection and re-establish it."""
        while not self._closed:
            await self._until_lost()
            if self._closed:
                return
            log.warning("lost connection to CSI driver", address=self.address)
            while True:
                if not await self._wait_for_ready(None):
                    return  # closed
                try:
                    await self._refresh()
                    break
                except DriverChangedError:
                    raise
                except CSIError as error:
                    log.warning("re-reading CSI driver information failed", error=str(error))
                    await asyncio.sleep(PROBE_INTERVAL)
            self.reconnects += 1
            record = getattr(self._recorder, "record_csi_reconnect", None)
            if callable(record):
                record(driver_name=self.driver_name)
            log.info(
                "reconnected to CSI driver",
                address=self.address,
                driver=self.driver_name,
                reconnects=self.reconnects,
            )
            for callback in self._callbacks:
                try:
                    await callback()
                except Exception as error:
                    log.error("reconnect callback failed", error=repr(error), exc_info=error)

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Close the channel; pending calls fail with Cancelled."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close(grace=None)

    async def __aenter__(self) -> CSIConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
