"""The CSI connection: waiting for the driver, discovery helpers, and reconnecting."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from csi_server import CSIServer, FakeDriver, RecordingRecorder

from common import logging
from common.csi import CSIConnection, NodeInfo, PluginInfo, connection, parse_address
from common.errors import CSIConnectError, CSIError, DriverChangedError


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logging.configure(verbosity=0, fmt="text", stream=stream, console=False)
    yield stream
    logging.configure(verbosity=0, fmt="text", console=False)


@pytest.mark.parametrize(
    ("address", "target", "path"),
    [
        ("/csi/csi.sock", "unix:///csi/csi.sock", "/csi/csi.sock"),
        ("unix:///csi/csi.sock", "unix:///csi/csi.sock", "/csi/csi.sock"),
        ("unix:/csi/csi.sock", "unix:///csi/csi.sock", "/csi/csi.sock"),
        ("localhost:10000", "localhost:10000", None),
    ],
)
def test_parse_address(address: str, target: str, path: str | None) -> None:
    endpoint = parse_address(address)
    assert (endpoint.target, endpoint.socket_path) == (target, path)


async def test_waits_for_a_socket_that_appears_late(tmp_path: Path) -> None:
    server = CSIServer(tmp_path / "csi.sock")
    connecting = asyncio.create_task(
        CSIConnection.connect(server.path, call_timeout=5, connect_timeout=10), name="connect"
    )
    await asyncio.sleep(0.05)
    assert not connecting.done()
    await server.start()
    try:
        async with await connecting as conn:
            assert await conn.probe()
    finally:
        await server.stop()


async def test_connect_error_names_a_socket_that_never_appears(tmp_path: Path) -> None:
    path = tmp_path / "never.sock"
    with pytest.raises(CSIConnectError) as caught:
        await CSIConnection.connect(str(path), call_timeout=1, connect_timeout=0.05)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_connect_error_when_nothing_listens(
    tmp_path: Path, log_output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "LOG_INTERVAL", 0.02)
    path = tmp_path / "dead.sock"
    path.write_text("not a socket")
    with pytest.raises(CSIConnectError) as caught:
        await CSIConnection.connect(f"unix://{path}", call_timeout=1, connect_timeout=0.1)
    assert "did not become ready" in str(caught.value)
    assert f"unix://{path}" in str(caught.value)
    assert '"still connecting to CSI driver"' in log_output.getvalue()


async def test_probe_forever_waits_for_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "PROBE_INTERVAL", 0.01)
    driver = FakeDriver(probe_ready=[False, False, True])
    async with (
        CSIServer(tmp_path / "csi.sock", driver) as server,
        await CSIConnection.connect(server.address, call_timeout=5) as conn,
    ):
        await conn.probe_forever()
    assert len(driver.calls_to("Probe")) == 3


async def test_probe_forever_retries_unavailable_then_fails_on_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "PROBE_INTERVAL", 0.01)
    driver = FakeDriver(errors={"Probe": grpc.StatusCode.UNAVAILABLE})
    async with (
        CSIServer(tmp_path / "csi.sock", driver) as server,
        await CSIConnection.connect(server.address, call_timeout=5) as conn,
    ):
        probing = asyncio.create_task(conn.probe_forever(), name="probe-forever")
        async with asyncio.timeout(5):
            while len(driver.calls_to("Probe")) < 2:
                await asyncio.sleep(0.01)
        assert not probing.done()
        driver.errors["Probe"] = grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(CSIError, match="code = FailedPrecondition"):
            await probing


async def test_missing_ready_field_means_ready(tmp_path: Path) -> None:
    async with (
        CSIServer(tmp_path / "csi.sock", FakeDriver(probe_ready=[None])) as server,
        await CSIConnection.connect(server.address, call_timeout=5) as conn,
    ):
        assert await conn.probe() is True
        await conn.probe_forever()


async def test_discovery_helpers(tmp_path: Path) -> None:
    driver = FakeDriver(
        name="hostpath.csi.k8s.io",
        vendor_version="v1.18.0",
        manifest={"commit": "abc"},
        controller_capabilities=["CREATE_DELETE_VOLUME", "MODIFY_VOLUME", "SINGLE_NODE_MULTI_WRITER"],
        node_id="node-7",
        max_volumes_per_node=16,
        topology={"topology.hostpath.csi/node": "node-7"},
    )
    async with (
        CSIServer(tmp_path / "csi.sock", driver) as server,
        await CSIConnection.connect(server.address, call_timeout=5) as conn,
    ):
        assert conn.driver_name == ""
        info = await conn.plugin_info()
        assert info == PluginInfo(
            name="hostpath.csi.k8s.io", vendor_version="v1.18.0", manifest={"commit": "abc"}
        )
        assert conn.driver_name == "hostpath.csi.k8s.io"
        assert await conn.plugin_capabilities() == {
            "CONTROLLER_SERVICE",
            "VOLUME_ACCESSIBILITY_CONSTRAINTS",
            "ONLINE",
        }
        assert await conn.controller_capabilities() == {
            "CREATE_DELETE_VOLUME",
            "MODIFY_VOLUME",
            "SINGLE_NODE_MULTI_WRITER",
        }
        assert await conn.node_capabilities() == {"STAGE_UNSTAGE_VOLUME", "EXPAND_VOLUME"}
        await conn.controller_capabilities()
        assert len(driver.calls_to("ControllerGetCapabilities")) == 1  # cached
        assert await conn.node_info() == NodeInfo(
            node_id="node-7",
            max_volumes_per_node=16,
            accessible_topology={"topology.hostpath.csi/node": "node-7"},
        )


async def test_discovery_failure_is_a_one_line_csi_error(tmp_path: Path) -> None:
    driver = FakeDriver(errors={"GetPluginInfo": grpc.StatusCode.INTERNAL})
    async with (
        CSIServer(tmp_path / "csi.sock", driver) as server,
        await CSIConnection.connect(server.address, call_timeout=5) as conn,
    ):
        with pytest.raises(CSIError, match=r"^GetPluginInfo failed: rpc error: code = Internal desc = "):
            await conn.plugin_info()
        driver.errors.clear()
        driver.name = ""
        with pytest.raises(CSIError, match="driver name is empty"):
            await conn.plugin_info()


async def _restart_and_wait(conn: CSIConnection, first: CSIServer, second: CSIServer) -> asyncio.Task[None]:
    """Start watching, stop `first`, start `second` on the same socket; returns the watch task."""
    watch = asyncio.create_task(conn.watch_connection(), name="csi-connection-watch")
    await asyncio.sleep(0)
    await first.stop()
    await second.start()
    return watch


async def test_reconnect_after_driver_restart(tmp_path: Path, log_output: io.StringIO) -> None:
    path = tmp_path / "csi.sock"
    recorder = RecordingRecorder()
    first = CSIServer(path, FakeDriver(name="test.csi.k8s.io"))
    second = CSIServer(
        path, FakeDriver(name="test.csi.k8s.io", controller_capabilities=["CREATE_DELETE_VOLUME"])
    )
    await first.start()
    conn = await CSIConnection.connect(str(path), call_timeout=5, recorder=recorder)
    reconnected = asyncio.Event()

    async def resync() -> None:
        reconnected.set()

    conn.on_reconnect(resync)
    try:
        await conn.plugin_info()
        assert "EXPAND_VOLUME" in await conn.controller_capabilities()
        watch = await _restart_and_wait(conn, first, second)
        async with asyncio.timeout(10):
            await reconnected.wait()
        assert conn.reconnects == 1
        assert recorder.reconnects == ["test.csi.k8s.io"]
        assert second.driver.calls_to("GetPluginInfo")
        assert second.driver.calls_to("ControllerGetCapabilities")
        assert await conn.controller_capabilities() == {"CREATE_DELETE_VOLUME"}  # re-read, not the old cache
        assert await conn.probe()
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    finally:
        await conn.close()
        await second.stop()
    logs = log_output.getvalue()
    assert '"lost connection to CSI driver"' in logs
    assert '"reconnected to CSI driver"' in logs


async def test_driver_changed_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    first = CSIServer(path, FakeDriver(name="old.csi.k8s.io"))
    second = CSIServer(path, FakeDriver(name="new.csi.k8s.io"))
    await first.start()
    conn = await CSIConnection.connect(str(path), call_timeout=5)
    try:
        await conn.plugin_info()
        watch = await _restart_and_wait(conn, first, second)
        with pytest.raises(DriverChangedError, match=r"new\.csi\.k8s\.io"):
            async with asyncio.timeout(10):
                await watch
        assert conn.reconnects == 0
    finally:
        await conn.close()
        await second.stop()


async def test_close_is_idempotent_and_ends_the_watch(tmp_path: Path) -> None:
    async with CSIServer(tmp_path / "csi.sock") as server:
        conn = await CSIConnection.connect(server.address, call_timeout=5)
        watch = asyncio.create_task(conn.watch_connection(), name="csi-connection-watch")
        await asyncio.sleep(0)
        await conn.close()
        await conn.close()
        async with asyncio.timeout(5):
            await watch
