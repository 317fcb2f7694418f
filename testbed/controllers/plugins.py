"""Kubelet's plugin watcher and CSI plugin registration: how a node-driver-registrar socket becomes a driver.

The watcher polls the registration directory (kubelet uses inotify; polling keeps the same contract):
every unix socket whose name does not start with "." is a plugin. For a new socket (or one replaced
by a new file) kubelet's `RegisterPlugin` operation runs:

1. `GetInfo` on the socket (1 s timeout). A type other than `CSIPlugin` is refused:
   `NotifyRegistrationStatus(plugin_registered=false, error=...)`.
2. `ValidatePlugin` (csi_plugin.go): a non-empty `supported_versions` with a 1.x version, and no
   driver of that name registered with an equal or higher version; failure is notified likewise.
3. `RegisterPlugin`: the driver is known by name at `endpoint` (the socket itself if empty);
   `NodeGetInfo` is called there and the node info manager writes the Node and CSINode entries; a
   failure unregisters the driver and is notified.
4. `NotifyRegistrationStatus(plugin_registered=true)`.

A socket that disappears is de-registered (`DeRegisterPlugin`: CSINode entry and node id removed).
A failed registration is retried with exponential backoff while the socket stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from proto import csi_pb2, csi_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc
from testbed.controllers.csi import go_error, grpc_target
from testbed.controllers.nodeinfo import NodeInfoManager

log = structlog.get_logger(__name__)
CSI_PLUGIN_TYPE = "CSIPlugin"
LOG_PREFIX = "kubernetes.io/csi: "
_VERSION = re.compile(r"^\s*v?(\d+)((?:\.\d+)*)")


@dataclass
class Driver:
    """A registered CSI driver: where kubelet reaches its Node service."""

    name: str
    endpoint: str
    version: tuple[int, ...]
    socket_path: str
    channel: grpc.aio.Channel
    node: csi_pb2_grpc.NodeStub
    node_id: str = ""
    node_capabilities: frozenset[str] = field(default_factory=frozenset)

    async def refresh_capabilities(self, timeout: float) -> frozenset[str]:
        """`NodeGetCapabilities`, called before each operation that depends on it, as kubelet does."""
        response = await self.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=timeout)
        names = csi_pb2.NodeServiceCapability.RPC.Type.Name
        self.node_capabilities = frozenset(names(c.rpc.type) for c in response.capabilities)
        return self.node_capabilities


class RegistrationError(Exception):
    """Registration failed; the message is what kubelet sends in `RegistrationStatus.error`."""


def highest_supported_version(versions: list[str]) -> tuple[int, ...]:
    """`utilversion.HighestSupportedVersion`: the highest 1.x version; ValueError if none."""
    best: tuple[int, ...] | None = None
    for text in versions:
        match = _VERSION.match(text)
        if not match:
            continue
        parsed = (int(match.group(1)), *(int(p) for p in match.group(2).split(".")[1:]))
        if parsed[0] <= 1 and (best is None or parsed > best):
            best = parsed
    if best is None or best[0] != 1:
        raise ValueError(
            f"could not find a highest supported version from versions ({versions}) reported by this driver"
        )
    return best


def _go_strings(values: list[str]) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


class PluginManager:
    """Watches `registration_dir`, registers CSI plugins, keeps `drivers` by name."""

    def __init__(
        self,
        nodeinfo: NodeInfoManager,
        *,
        registration_dir: Path | None,
        endpoint_override: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        poll_interval: float = 0.05,
        csi_timeout: float = 10.0,
    ) -> None:
        self.nodeinfo = nodeinfo
        self.registration_dir = registration_dir
        self.endpoint_override = endpoint_override
        self.on_change = on_change
        self.poll_interval = poll_interval
        self.csi_timeout = csi_timeout
        self.drivers: dict[str, Driver] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}

    async def run(self) -> None:
        """Poll the directory forever; on exit close every driver connection."""
        try:
            while True:
                if self.registration_dir is not None:
                    await self._scan(self.registration_dir)
                await asyncio.sleep(self.poll_interval)
        finally:
            for driver in list(self.drivers.values()):
                await driver.channel.close(None)
            self.drivers.clear()

    async def _scan(self, directory: Path) -> None:
        found: dict[str, tuple[int, int]] = {}
        for root, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    if stat.S_ISSOCK(info.st_mode):
                        found[path] = (info.st_ino, info.st_mtime_ns)
        for path in [p for p in self._seen if found.get(p) != self._seen[p]]:
            del self._seen[path]
            self._retry_at.pop(path, None)
            await self.deregister(path)
        loop_time = asyncio.get_running_loop().time()
        for path, identity in found.items():
            if path in self._seen:
                continue
            due, delay = self._retry_at.get(path, (0.0, 0.25))
            if loop_time < due:
                continue
            try:
                await self.register(path)
            except Exception as exc:
                log.info("plugin registration failed", socket=path, error=str(exc))
                self._retry_at[path] = (loop_time + delay, min(delay * 2, 30.0))
                continue
            self._seen[path] = identity
            self._retry_at.pop(path, None)

    async def register(self, socket_path: str) -> Driver:
        """kubelet's RegisterPlugin operation for one registration socket."""
        async with grpc.aio.insecure_channel(
            grpc_target(socket_path), options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            info = await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=1.0)
            try:
                if info.type != CSI_PLUGIN_TYPE:
                    raise RegistrationError(
                        f"RegisterPlugin error -- no handler registered for plugin type: {info.type} "
                        f"at socket {socket_path}"
                    )
                endpoint = info.endpoint or socket_path
                try:
                    version = self.validate(info.name, endpoint, list(info.supported_versions))
                except ValueError as exc:
                    raise RegistrationError(
                        f"RegisterPlugin error -- plugin validation failed with err: {exc}"
                    ) from None
                try:
                    driver = await self.install(info.name, endpoint, version, socket_path)
                except Exception as exc:
                    raise RegistrationError(
                        f"RegisterPlugin error -- plugin registration failed with err: {go_error(exc)}"
                    ) from None
            except RegistrationError as exc:
                status = pluginregistration_pb2.RegistrationStatus(plugin_registered=False, error=str(exc))
                await stub.NotifyRegistrationStatus(status, timeout=1.0)
                raise
            status = pluginregistration_pb2.RegistrationStatus(plugin_registered=True)
            await stub.NotifyRegistrationStatus(status, timeout=1.0)
        log.info("plugin registered", driver=driver.name, endpoint=driver.endpoint, socket=socket_path)
        self.on_change()
        return driver

    async def register_endpoint(self, endpoint: str) -> Driver:
        """Register the driver at `endpoint` directly, without a registrar (GetPluginInfo names it)."""
        async with grpc.aio.insecure_channel(
            grpc_target(endpoint), options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            info = await identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=self.csi_timeout)
        driver = await self.install(info.name, endpoint, (1, 0, 0), socket_path="")
        log.info("driver registered directly", driver=driver.name, endpoint=driver.endpoint)
        self.on_change()
        return driver

    def validate(self, name: str, endpoint: str, versions: list[str]) -> tuple[int, ...]:
        """`RegistrationHandler.ValidatePlugin`: the highest supported version, or ValueError."""
        prefix = (
            f"validation failed for CSI Driver {name} at endpoint {endpoint}: "
            f"{LOG_PREFIX}ValidatePlugin for CSI driver"
        )
        if not versions:
            raise ValueError(
                f'{prefix} "{name}" failed. Plugin returned an empty list for supported versions'
            )
        try:
            version = highest_supported_version(versions)
        except ValueError as exc:
            raise ValueError(
                f'{prefix} "{name}" failed. None of the versions specified {_go_strings(versions)} '
                f"are supported. err={exc}"
            ) from None
        existing = self.drivers.get(name)
        if existing is not None and existing.version >= version:
            current = ".".join(str(p) for p in existing.version)
            raise ValueError(
                f'{prefix} "{name}" failed. Another driver with the same name is already registered '
                f'with a higher supported version: "{current}"'
            )
        return version

    async def install(self, name: str, endpoint: str, version: tuple[int, ...], socket_path: str) -> Driver:
        """`RegistrationHandler.RegisterPlugin`: remember the driver, NodeGetInfo, write node info."""
        target = grpc_target(self.endpoint_override or endpoint)
        channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        driver = Driver(name, target, version, socket_path, channel, csi_pb2_grpc.NodeStub(channel))
        previous = self.drivers.pop(name, None)
        self.drivers[name] = driver
        try:
            info = await driver.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=self.csi_timeout)
            driver.node_id = info.node_id
            topology = dict(info.accessible_topology.segments) if info.HasField("accessible_topology") else {}
            await self.nodeinfo.install_driver(name, info.node_id, info.max_volumes_per_node, topology)
        except BaseException:
            self.drivers.pop(name, None)
            if previous is not None:
                self.drivers[name] = previous
            await channel.close(None)
            raise
        if previous is not None:
            await previous.channel.close(None)
        return driver

    async def deregister(self, socket_path: str) -> None:
        """`DeRegisterPlugin` for the driver registered through `socket_path`, if any."""
        for name, driver in list(self.drivers.items()):
            if driver.socket_path != socket_path:
                continue
            del self.drivers[name]
            await driver.channel.close(None)
            try:
                await self.nodeinfo.uninstall_driver(name)
            except Exception as exc:
                log.info("could not uninstall csi driver from node", driver=name, error=str(exc))
            log.info("plugin deregistered", driver=name, socket=socket_path)
            self.on_change()
