"""`--debug`: each sidecar started with nothing else runs on an embedded test bed in its own process.

The real entrypoints run as subprocesses with no cluster configured (empty `$KUBECONFIG`, a `$HOME`
without ~/.kube/config) and no `--csi-address`. They print where the embedded API server (kubeconfig)
and test driver (socket) are; the test talks to them like a user with kubectl would, checks that the
sidecar works against them, then SIGTERMs it: exit 0, nothing left behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kit import SidecarProcess, eventually

from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.kube.resources import CSI_NODES, PERSISTENT_VOLUMES, STORAGE_CLASSES, VOLUME_ATTACHMENTS

DRIVER = "hostpath.csi.k8s.io"


def no_cluster(home: Path) -> dict[str, str]:
    return {"KUBECONFIG": "", "HOME": str(home), "KUBERNETES_SERVICE_HOST": ""}


async def banner(process: SidecarProcess) -> dict[str, str]:
    """What the debug banner says: `kubeconfig`, `socket`, `workdir`."""

    def parse() -> dict[str, str] | None:
        text = process.log()
        assert process.running(), text[-3000:]
        found: dict[str, str] = {}
        if m := re.search(r"removed on exit, (/\S+)\):", text):
            found["workdir"] = m.group(1)
        if m := re.search(r"kubectl --kubeconfig=(\S+)", text):
            found["kubeconfig"] = m.group(1)
        if m := re.search(r"CSI test driver \S+ \(node node-1\): unix://(\S+)", text):
            found["socket"] = m.group(1)
        return found if "workdir" in found and "socket" in found else None

    result: dict[str, str] = await eventually(parse, timeout=30, message="the debug banner")
    return result


async def client(kubeconfig: str) -> KubeClient:
    from common.backoff import TokenBucket

    config = await load_cluster_config(kubeconfig=kubeconfig)
    return KubeClient(config, limiter=TokenBucket(100, 100), user_agent="debug-mode-test")


async def stop_and_check_cleanup(process: SidecarProcess, where: dict[str, str]) -> None:
    code = await process.stop(timeout=20)
    log = process.log()
    assert code == 0, log[-3000:]
    for complaint in ("Task was destroyed but it is pending", "was never awaited", "Traceback"):
        assert complaint not in log, log[-3000:]
    assert not Path(where["workdir"]).exists()


async def test_attacher_attaches_on_the_embedded_bed(tmp_path: Path) -> None:
    process = SidecarProcess(
        "sidecars.attacher", ["--debug"], log_dir=tmp_path, env=no_cluster(tmp_path)
    ).start()
    try:
        where = await banner(process)
        assert "--v=5" not in process.args  # the verbosity comes from debug mode
        kube = await client(where["kubeconfig"])
        try:

            async def registered() -> dict[str, Any] | None:
                node = await kube.get(CSI_NODES, "node-1")
                return node if node["spec"].get("drivers") else None

            csinode = await eventually(registered, message="the driver in the kubelet's CSINode")
            assert [d["name"] for d in csinode["spec"]["drivers"]] == [DRIVER]
            sc = await kube.get(STORAGE_CLASSES, "csi-hostpath-sc")
            assert sc["provisioner"] == DRIVER
            await kube.create(
                PERSISTENT_VOLUMES,
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": "pv-1"},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "csi": {"driver": DRIVER, "volumeHandle": "no-such-volume"},
                    },
                },
            )
            await kube.create(
                VOLUME_ATTACHMENTS,
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "VolumeAttachment",
                    "metadata": {"name": "va-1"},
                    "spec": {
                        "attacher": DRIVER,
                        "nodeName": "node-1",
                        "source": {"persistentVolumeName": "pv-1"},
                    },
                },
            )

            async def attach_error() -> str:
                va = await kube.get(VOLUME_ATTACHMENTS, "va-1")
                return str(((va.get("status") or {}).get("attachError") or {}).get("message", ""))

            # The embedded driver has no such volume: the attacher called it and recorded its answer.
            message = await eventually(attach_error, timeout=20, message="attachError")
            assert message.startswith("rpc error: code = NotFound")
        finally:
            await kube.close()
        assert "GRPC call" in process.log()  # --v=5: every CSI call traced
        await stop_and_check_cleanup(process, where)
    finally:
        if process.running():
            await process.kill()


async def test_registrar_registers_with_the_embedded_kubelet(tmp_path: Path) -> None:
    process = SidecarProcess(
        "sidecars.registrar", ["--debug"], log_dir=tmp_path, env=no_cluster(tmp_path)
    ).start()
    try:
        where = await banner(process)
        await eventually(
            lambda: "kubelet confirmed the registration" in process.log(), timeout=20, message="registration"
        )
        kube = await client(where["kubeconfig"])
        try:
            csinode = await kube.get(CSI_NODES, "node-1")
            assert [(d["name"], d["nodeID"]) for d in csinode["spec"]["drivers"]] == [(DRIVER, "node-1")]
        finally:
            await kube.close()
        assert list((Path(where["workdir"]) / "plugins_registry").iterdir()) == [
            Path(where["workdir"]) / "plugins_registry" / f"{DRIVER}-reg.sock"
        ]
        await stop_and_check_cleanup(process, where)
    finally:
        if process.running():
            await process.kill()


async def test_resizer_starts_on_the_embedded_bed(tmp_path: Path) -> None:
    process = SidecarProcess(
        "sidecars.resizer", ["--debug"], log_dir=tmp_path, env=no_cluster(tmp_path)
    ).start()
    try:
        where = await banner(process)
        await eventually(lambda: "caches synced, starting controllers" in process.log(), timeout=20)
        assert "leader-election" not in process.log()
        await stop_and_check_cleanup(process, where)
    finally:
        if process.running():
            await process.kill()


async def test_livenessprobe_once_on_the_embedded_driver(tmp_path: Path) -> None:
    process = SidecarProcess(
        "sidecars.livenessprobe", ["--debug", "--once"], log_dir=tmp_path, env=no_cluster(tmp_path)
    ).start()
    assert await process.wait(30) == 0, process.log()[-3000:]
    assert "\n200 ok\n" in process.log()
