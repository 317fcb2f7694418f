"""The control plane as a whole: names, lifecycle, the test bed, and `python -m testbed.controllers`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from test_controllers_kit import DRIVER, claim, eventually, storage_class

from testbed.controllers import (
    CONTROLLER_NAMES,
    ControlPlane,
    Kubelet,
    KubeletConfig,
    PersistentVolumeController,
    TestbedOptions,
    expand_names,
    start_testbed,
)
from testbed.controllers.base import Controller

ROOT = Path(__file__).resolve().parents[2]


def test_names_and_aliases() -> None:
    assert expand_names(["pv"]) == ["persistentvolume-binder", "pvc-protection", "pv-protection"]
    assert expand_names(["kubelet", "all"]) == list(CONTROLLER_NAMES)
    assert expand_names(["attachdetach", "", "scheduler"]) == ["scheduler", "attachdetach"]
    with pytest.raises(ValueError, match="unknown controller 'kcm'"):
        expand_names(["kcm"])


async def test_the_plane_runs_named_tasks_and_stops_them() -> None:
    from testbed.apiserver import Store

    store = Store()
    plane = ControlPlane(store, ["pv", "kubelet"])
    assert isinstance(plane["persistentvolume-binder"], PersistentVolumeController)
    assert isinstance(plane.kubelet, Kubelet)
    await plane.start()
    await plane.wait_synced()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert {f"testbed {n}" for n in plane.controllers} <= names
    assert "kubelet worker" in names and "persistentvolume-binder informer persistentvolumes" in names
    await plane.stop()
    assert not {n for n in (t.get_name() for t in asyncio.all_tasks()) if n.startswith("testbed ")}


class Broken(Controller):
    name = "broken"

    async def run(self) -> None:
        raise RuntimeError("boom")


async def test_a_crashed_controller_fails_the_stop() -> None:
    from testbed.apiserver import Store

    store = Store()
    plane = ControlPlane(store, [])
    await plane.start()
    plane.add(Broken(store))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="controller task 'testbed broken' crashed"):
        await plane.stop()


async def test_stand_ins_act_on_the_store_so_the_request_log_is_the_clients_only(tmp_path: Path) -> None:
    """An RBAC check compares the request log with our RBAC: the stand-ins must not appear in it."""
    options = TestbedOptions(kubeconfig_out=str(tmp_path / "kubeconfig"), resync_period=0.2)
    async with start_testbed(options) as bed, aiohttp.ClientSession(bed.server.url) as http:
        store = bed.server.store
        assert (await store.get("nodes", "node-1"))["metadata"]["name"] == "node-1"  # the kubelet's node
        async with http.post("/apis/storage.k8s.io/v1/storageclasses", json=storage_class()) as response:
            assert response.status == 201
        async with http.post("/api/v1/namespaces/default/persistentvolumeclaims", json=claim()) as response:
            assert response.status == 201

        async def annotated() -> bool:
            pvc = await store.get("persistentvolumeclaims", "data", namespace="default")
            annotations = pvc["metadata"].get("annotations") or {}
            return annotations.get("volume.kubernetes.io/storage-provisioner") == DRIVER

        await eventually(annotated, what="the PV controller's annotation")
        verbs = sorted((r.verb, r.resource) for r in bed.server.requests.records())
        assert verbs == [("create", "persistentvolumeclaims"), ("create", "storageclasses")]


async def test_the_process_prints_where_it_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.controllers",
        "--port",
        "0",
        "--kubeconfig-out",
        str(kubeconfig),
        "--controllers",
        "pv,scheduler,attachdetach,kubelet",
        "--node",
        "worker-7",
        "--registration-dir",
        str(tmp_path),
        "--v",
        "1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        ready = json.loads(line)
        assert ready["kubeconfig"] == str(kubeconfig) and kubeconfig.exists()
        assert ready["node"] == "worker-7"
        assert ready["controllers"] == [
            "persistentvolume-binder",
            "pvc-protection",
            "pv-protection",
            "scheduler",
            "attachdetach",
            "kubelet",
        ]
        async with (
            aiohttp.ClientSession(ready["url"]) as http,
            http.get("/api/v1/nodes/worker-7") as response,
        ):
            node = await response.json()
        assert node["metadata"]["annotations"] == {
            "volumes.kubernetes.io/controller-managed-attach-detach": "true"
        }

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        stderr = (await process.stderr.read()).decode()
        assert "Task was destroyed" not in stderr and "never awaited" not in stderr
        assert "control plane stopped" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_node_gets_its_own_kubelet() -> None:
    from testbed.apiserver import Store

    store = Store()
    async with ControlPlane(store, ["kubelet"]) as plane:
        second = plane.add(Kubelet(store, KubeletConfig(node_name="node-2")), "kubelet node-2")
        with pytest.raises(ValueError, match="already in the plane"):
            plane.add(Kubelet(store), "kubelet node-2")
        await plane.wait_synced()
        nodes = (await store.list("nodes"))["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["node-1", "node-2"]
        assert plane["kubelet node-2"] is second
