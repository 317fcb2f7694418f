"""The test driver's HTTP control endpoint and its standalone process (`python -m testbed.csidriver`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from proto import csi_pb2
from testbed.csidriver import TestDriver, connect
from testbed.csidriver.control import parse_address, serve_control

ROOT = Path(__file__).resolve().parents[2]
Code = grpc.StatusCode


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


async def test_control_endpoint_drives_an_in_process_driver(tmp_path: Path) -> None:
    driver = TestDriver(endpoint=f"unix://{tmp_path}/csi.sock")
    async with (
        driver.serve(),
        connect(driver.address) as csi,
        serve_control(driver, "127.0.0.1:0") as url,
        aiohttp.ClientSession(url) as http,
    ):
        async with http.get("/healthz") as r:
            assert await r.text() == "ok"

        fault = {"method": "CreateVolume", "kind": "error", "code": "RESOURCE_EXHAUSTED", "count": 1}
        async with http.post("/faults", json=fault) as r:
            assert r.status == 200 and (await r.json())["id"] >= 1
        request = csi_pb2.CreateVolumeRequest(
            name="pvc-1",
            volume_capabilities=[
                csi_pb2.VolumeCapability(mount={}, access_mode={"mode": "SINGLE_NODE_WRITER"}),
            ],
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await csi.controller.CreateVolume(request)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        await csi.controller.CreateVolume(request)

        async with http.get("/state") as r:
            state = await r.json()
        assert [v["name"] for v in state["volumes"]] == ["pvc-1"]
        assert state["counts"] == {"CreateVolume": 2} and state["faults"] == []
        async with http.get("/calls", params={"method": "CreateVolume"}) as r:
            calls = (await r.json())["calls"]
        assert [c["code"] for c in calls] == ["RESOURCE_EXHAUSTED", "OK"]

        async with http.post("/faults", json={"method": "Probe", "kind": "delay", "delay": 0.01}) as r:
            fault_id = (await r.json())["id"]
        async with http.delete(f"/faults/{fault_id}") as r:
            assert r.status == 200
        async with http.delete(f"/faults/{fault_id}") as r:
            assert r.status == 404
        async with http.post("/faults", json={"method": "Nope", "kind": "error"}) as r:
            assert r.status == 400 and "unknown CSI method" in (await r.json())["error"]

        async with http.post("/ready", json={"ready": False}) as r:
            assert r.status == 200
        assert not (await csi.identity.Probe(csi_pb2.ProbeRequest())).ready.value

        async with http.post("/config", json={"controller_capabilities": ["CREATE_DELETE_VOLUME"]}) as r:
            assert (await r.json())["controller_capabilities"] == ["CREATE_DELETE_VOLUME"]
        caps = await csi.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
        assert len(caps.capabilities) == 1
        async with http.post("/config", json={"controller_capabilities": ["BOGUS"]}) as r:
            assert r.status == 400

        async with http.post("/crash", json={"restart_after": None}) as r:
            assert (await r.json()) == {"serving": False}
        assert not exists(tmp_path / "csi.sock")
        async with http.post("/restart", json={"keep_state": True}) as r:
            assert (await r.json()) == {"serving": True}
        async with http.delete("/calls") as r:
            assert r.status == 200
        assert len(driver.calls) == 0 and len(driver.volumes) == 1


async def test_start_replaces_a_stale_socket_and_needs_an_endpoint(tmp_path: Path) -> None:
    stale = tmp_path / "sub" / "csi.sock"
    stale.parent.mkdir()
    stale.write_text("left over by a killed driver")
    driver = TestDriver()
    with pytest.raises(ValueError, match="no endpoint"):
        await driver.start()
    async with driver.serve(f"unix:{stale}"), connect(driver.address) as csi:
        assert (await csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())).name
    assert not exists(stale)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address(":9808") == ("127.0.0.1", 9808)
    with pytest.raises(ValueError):
        parse_address("localhost")


async def test_standalone_process_serves_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    socket = tmp_path / "csi.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.csidriver",
        f"--endpoint=unix://{socket}",
        "--nodeid=node-1",
        "--drivername=example.csi.k8s.io",
        "--control-address=127.0.0.1:0",
        "--capabilities=-PUBLISH_UNPUBLISH_VOLUME",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            ready = json.loads(await proc.stdout.readline())
        assert ready["endpoint"] == f"unix://{socket}"
        async with connect(ready["endpoint"]) as csi, aiohttp.ClientSession(ready["control_url"]) as http:
            info = await csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
            assert info.name == "example.csi.k8s.io"
            caps = await csi.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
            names = {csi_pb2.ControllerServiceCapability.RPC.Type.Name(c.rpc.type) for c in caps.capabilities}
            assert "CREATE_DELETE_VOLUME" in names and "PUBLISH_UNPUBLISH_VOLUME" not in names

            async with http.post(
                "/faults", json={"method": "Probe", "kind": "error", "code": "INTERNAL"}
            ) as r:
                assert r.status == 200
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await csi.identity.Probe(csi_pb2.ProbeRequest())
            assert err.value.code() == Code.INTERNAL
            async with http.get("/state") as r:
                assert (await r.json())["counts"] == {
                    "GetPluginInfo": 1,
                    "ControllerGetCapabilities": 1,
                    "Probe": 1,
                }
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr
        assert not exists(socket)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
