"""csi-node-driver-registrar end to end: the real entrypoint against the CSI test driver and a kubelet.

Most tests play kubelet's side of the protocol in the test (`Kubelet`: find `*-reg.sock`, GetInfo,
NodeGetInfo on the endpoint it was given, NotifyRegistrationStatus), which lets them refuse or
delay; one runs the test bed's kubelet stand-in (plugin watcher and node info manager) against the
test-bed API server and checks the CSINode it writes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket as sockets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from kit import ASYNCIO_COMPLAINTS, SidecarProcess, eventually, rss_mib
from kit import stop_cleanly as kit_stop_cleanly

from proto import csi_pb2, csi_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc
from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

stop_cleanly = functools.partial(kit_stop_cleanly, forbidden=(*ASYNCIO_COMPLAINTS, "Traceback"))
"""SIGTERM: exit 0 and a clean log (kit.stop_cleanly with this module's bounds)."""

GOLDEN = Path(__file__).parent.parent / "golden"
MODULE = "sidecars.registrar"
Start = Callable[..., SidecarProcess]
IDLE_RSS_CEILING_MIB = 48.0
"""A regression guard; the goal (40 MiB) is measured by bench/sidecar_rss.py: ~42 MiB idle in the dev
venv (whose `rich` structlog picks up), ~37 with runtime dependencies only. Above this something heavy
(aiohttp, kubernetes_asyncio, prometheus_client, OpenSSL) was imported by accident."""


def golden_response(name: str) -> tuple[int, str, str]:
    """(status, content type, body) of a captured Go response."""
    head, _, body = (GOLDEN / name).read_text().partition("\n\n")
    lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"], body


async def http_port(process: SidecarProcess) -> int:
    """The port the sidecar's HTTP endpoint bound (it listens on port 0 in these tests)."""

    def found() -> int | None:
        assert process.running(), process.log()
        match = re.search(r'"HTTP endpoint listening" .*port=(\d+)', process.log())
        return int(match.group(1)) if match else None

    return await eventually(found, timeout=20, message="the HTTP endpoint")


async def get(port: int, path: str = "/healthz") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as rsp:
        return rsp.status, rsp.headers["Content-Type"], await rsp.text()


@dataclass
class Kubelet:
    """Kubelet's plugin watcher and CSI plugin handler, as far as the registration socket goes."""

    plugin_dir: Path

    def sockets(self) -> list[str]:
        return sorted(p.name for p in self.plugin_dir.iterdir() if p.name.endswith("-reg.sock"))

    async def get_info(self, socket: str) -> Any:
        async with grpc.aio.insecure_channel(f"unix://{self.plugin_dir / socket}") as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            return await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=5, wait_for_ready=True)

    async def notify(self, socket: str, *, registered: bool, error: str = "") -> None:
        async with grpc.aio.insecure_channel(f"unix://{self.plugin_dir / socket}") as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            status = pluginregistration_pb2.RegistrationStatus(plugin_registered=registered, error=error)
            await stub.NotifyRegistrationStatus(status, timeout=5)

    async def register(self, socket: str) -> str:
        """GetInfo, validate, NodeGetInfo on the endpoint, confirm; returns the node ID found."""
        info = await self.get_info(socket)
        assert info.type == "CSIPlugin" and "1.0.0" in info.supported_versions
        async with grpc.aio.insecure_channel(f"unix://{info.endpoint}") as channel:
            node = await csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=5)
        await self.notify(socket, registered=True)
        return str(node.node_id)


@pytest.fixture
def kubelet(socket_dir: Path) -> Kubelet:
    plugin_dir = socket_dir / "plugins_registry"
    plugin_dir.mkdir()
    return Kubelet(plugin_dir)


def start_registrar(sidecar: Start, driver: TestDriver, kubelet: Kubelet, *extra: str) -> SidecarProcess:
    assert driver.endpoint is not None
    host_path = driver.endpoint.removeprefix("unix://")  # host and container paths agree here
    return sidecar(
        MODULE,
        f"--csi-address={driver.endpoint}",
        f"--kubelet-registration-path={host_path}",
        f"--plugin-registration-path={kubelet.plugin_dir}",
        "--http-endpoint=127.0.0.1:0",
        "--v=5",
        *extra,
    )


async def test_kubelet_registers_the_driver_end_to_end(
    sidecar: Start, driver: TestDriver, kubelet: Kubelet
) -> None:
    registrar = start_registrar(sidecar, driver, kubelet)
    port = await http_port(registrar)
    assert kubelet.sockets() == [(GOLDEN / "17-registration-dir.txt").read_text().strip()]
    (socket,) = kubelet.sockets()
    assert os.stat(kubelet.plugin_dir / socket).st_mode & 0o077 == 0

    info = await kubelet.get_info(socket)
    assert (info.name, info.endpoint, list(info.supported_versions)) == (
        "hostpath.csi.k8s.io",
        driver.endpoint.removeprefix("unix://") if driver.endpoint else "",
        ["1.0.0"],
    )
    assert await get(port) == (500, "text/plain; charset=utf-8", "registration not yet confirmed by kubelet")

    assert await kubelet.register(socket) == driver.config.node_id
    assert await get(port) == golden_response("13-registrar-healthz.txt")
    assert driver.calls.counts["GetPluginInfo"] == 1
    assert driver.calls.counts.get("Probe", 0) == 0  # upstream does not probe

    log = await stop_cleanly(registrar)
    assert kubelet.sockets() == []  # SIGTERM removed the socket
    assert "Received NotifyRegistrationStatus call" in log


async def test_kubelet_refusing_the_plugin_exits_1(
    sidecar: Start, driver: TestDriver, kubelet: Kubelet
) -> None:
    registrar = start_registrar(sidecar, driver, kubelet)
    await http_port(registrar)
    (socket,) = kubelet.sockets()
    await kubelet.get_info(socket)
    await kubelet.notify(socket, registered=False, error="plugin hostpath.csi.k8s.io is already registered")
    assert await registrar.wait(10) == 1
    log = registrar.log()
    assert "Registration process failed with error, restarting registration container" in log
    assert "csi-node-driver-registrar: kubelet failed to register plugin hostpath.csi.k8s.io" in log
    assert "Traceback" not in log


async def test_deleted_socket_is_recreated_and_registered_again(
    sidecar: Start, driver: TestDriver, kubelet: Kubelet
) -> None:
    registrar = start_registrar(sidecar, driver, kubelet)
    port = await http_port(registrar)
    (socket,) = kubelet.sockets()
    await kubelet.register(socket)
    assert (await get(port))[0] == 200
    path = kubelet.plugin_dir / socket
    path.unlink()
    await eventually(path.exists, timeout=5, message="the registration socket to come back")
    assert "registration socket disappeared, recreating it" in registrar.log()
    assert (await get(port))[2] == "registration not yet confirmed by kubelet"
    await kubelet.register(socket)  # the plugin watcher sees a new socket
    assert await get(port) == golden_response("13-registrar-healthz.txt")
    await stop_cleanly(registrar)


async def test_stale_socket_is_replaced_at_start(
    sidecar: Start, driver: TestDriver, kubelet: Kubelet
) -> None:
    stale = kubelet.plugin_dir / "hostpath.csi.k8s.io-reg.sock"
    with sockets.socket(sockets.AF_UNIX) as left_behind:
        left_behind.bind(str(stale))
    registrar = start_registrar(sidecar, driver, kubelet)
    await http_port(registrar)
    assert (await kubelet.get_info(stale.name)).name == "hostpath.csi.k8s.io"
    await stop_cleanly(registrar)


async def test_probe_mode_exits_0_without_registering(sidecar: Start, kubelet: Kubelet) -> None:
    probe = sidecar(
        MODULE,
        "--mode=kubelet-registration-probe",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/csi-hostpath/csi.sock",
        f"--plugin-registration-path={kubelet.plugin_dir}",
        "--csi-address=/nonexistent/csi.sock",
    )
    assert await probe.wait(20) == 0
    assert kubelet.sockets() == []


async def test_missing_kubelet_registration_path_exits_1(sidecar: Start) -> None:
    registrar = sidecar(MODULE, "--csi-address=/nonexistent/csi.sock")
    assert await registrar.wait(20) == 1
    assert "csi-node-driver-registrar: kubelet-registration-path is a required parameter" in registrar.log()


async def test_driver_name_failure_exits_1(sidecar: Start, driver: TestDriver, kubelet: Kubelet) -> None:
    driver.faults.add("GetPluginInfo", "error", code=grpc.StatusCode.INTERNAL, message="broken")
    registrar = start_registrar(sidecar, driver, kubelet)
    assert await registrar.wait(20) == 1
    assert "GetPluginInfo failed: rpc error: code = Internal desc = broken" in registrar.log()
    assert kubelet.sockets() == []


async def test_version(sidecar: Start) -> None:
    process = sidecar(MODULE, "--version")
    assert await process.wait(20) == 0
    assert re.search(r"csi-node-driver-registrar v\S+", process.log())


async def test_sigterm_while_kubelet_is_calling(sidecar: Start, driver: TestDriver, kubelet: Kubelet) -> None:
    registrar = start_registrar(sidecar, driver, kubelet)
    await http_port(registrar)
    (socket,) = kubelet.sockets()
    calls = [asyncio.create_task(kubelet.get_info(socket), name=f"get info {n}") for n in range(10)]
    await stop_cleanly(registrar)
    await asyncio.gather(*calls, return_exceptions=True)
    assert kubelet.sockets() == []


async def test_idle_rss_stays_small(sidecar: Start, driver: TestDriver, kubelet: Kubelet) -> None:
    """Guards the no-Kubernetes-client diet: importing kubernetes_asyncio alone adds ~35 MiB."""
    registrar = start_registrar(sidecar, driver, kubelet)
    await http_port(registrar)
    await kubelet.register(kubelet.sockets()[0])
    await asyncio.sleep(1.0)  # idle
    rss = rss_mib(registrar.pid)
    print(f"csi-node-driver-registrar idle RSS: {rss:.1f} MiB")
    assert rss < IDLE_RSS_CEILING_MIB
    await stop_cleanly(registrar)


async def test_kubelet_stand_in_writes_the_drivers_node_id_into_csinode(
    sidecar: Start, driver: TestDriver, kubelet: Kubelet, apiserver: ApiServer
) -> None:
    """The test bed's kubelet (plugin watcher + node info manager) registers through our registrar."""
    plugins = pytest.importorskip("testbed.controllers.plugins")
    nodeinfo = pytest.importorskip("testbed.controllers.nodeinfo")
    node_name = driver.config.node_id
    manager = nodeinfo.NodeInfoManager(apiserver.store, node_name)
    await manager.register_node()
    watcher = plugins.PluginManager(manager, registration_dir=kubelet.plugin_dir)
    watching = asyncio.create_task(watcher.run(), name="kubelet plugin watcher")

    async def csinode_driver() -> dict[str, Any] | None:
        csinode = await apiserver.store.get("csinodes", node_name)
        drivers = {d["name"]: d for d in csinode["spec"].get("drivers") or []}
        return drivers.get("hostpath.csi.k8s.io")

    async def unregistered() -> bool:
        return await csinode_driver() is None

    try:
        registrar = start_registrar(sidecar, driver, kubelet)
        port = await http_port(registrar)
        entry = await eventually(csinode_driver, timeout=10, message="the CSINode driver entry")
        assert entry["nodeID"] == driver.config.node_id
        assert entry["topologyKeys"] == [driver.config.topology_key]
        await eventually(lambda: registrar.log().count("kubelet confirmed the registration") == 1, timeout=5)
        assert await get(port) == golden_response("13-registrar-healthz.txt")

        # someone deletes the socket: kubelet deregisters, the registrar recreates it, kubelet registers again
        (kubelet.plugin_dir / kubelet.sockets()[0]).unlink()
        await eventually(lambda: registrar.log().count("kubelet confirmed the registration") == 2, timeout=10)
        assert (await eventually(csinode_driver, timeout=5))["nodeID"] == driver.config.node_id
        assert await get(port) == golden_response("13-registrar-healthz.txt")

        await stop_cleanly(registrar)  # SIGTERM removes the socket: kubelet deregisters the driver
        await eventually(unregistered, timeout=5, message="the CSINode entry to go")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
