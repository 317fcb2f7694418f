"""`--once`: one reconcile pass of the real sidecar against the test bed, then exit 0 or 1 naming what failed.

What a driver vendor's CI does: objects are in the cluster, the sidecar runs once, the exit code says
whether every object synced. Real entrypoints as subprocesses, the in-process test-bed API server and
CSI test driver.
"""

from __future__ import annotations

from pathlib import Path

from attacher_fixtures import add_volume, create_node, create_pv, create_va, get_or_none
from kit import SidecarProcess
from resizer_fixtures import bound_claim, request

from common.kube.client import KubeClient
from common.kube.resources import PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from testbed.csidriver import TestDriver


async def run_once(module: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    process = SidecarProcess(module, ["--once", "--v=2", *args], log_dir=tmp_path).start()
    code = await process.wait(60)
    return code, process.log()


async def test_attacher_once_names_the_failed_attachment_then_passes(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, tmp_path: Path
) -> None:
    await create_node(kube)
    add_volume(driver, "vol-1")
    await create_pv(kube, "pv-good", handle="vol-1")
    await create_va(kube, "va-good", pv="pv-good")
    await create_va(kube, "va-bad", pv="pv-missing")
    args = (f"--kubeconfig={kubeconfig}", f"--csi-address={driver.address}", "--leader-election")

    code, log = await run_once("sidecars.attacher", tmp_path, *args)
    assert code == 1, log[-3000:]
    assert (
        "csi-attacher: 1 not synced after one pass (1 synced): csi-attacher-va va-bad (failed: failed to "
        'attach: persistentvolume "pv-missing" not found)' in log
    )
    good = await kube.get(VOLUME_ATTACHMENTS, "va-good")
    assert good["status"]["attached"] is True
    assert "leader" not in log.lower().replace("--leader-election", "")  # no election in a pass

    await kube.delete(VOLUME_ATTACHMENTS, "va-bad")
    code, log = await run_once("sidecars.attacher", tmp_path, *args)
    assert code == 0, log[-3000:]
    assert '"reconcile pass finished"' in log
    assert await get_or_none(kube, VOLUME_ATTACHMENTS, "va-bad") is None


async def test_resizer_once_expands_and_exits_0(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, tmp_path: Path
) -> None:
    _, pv = await bound_claim(kube, driver)
    await request(kube, "2Gi")
    code, log = await run_once(
        "sidecars.resizer", tmp_path, f"--kubeconfig={kubeconfig}", f"--csi-address={driver.address}"
    )
    assert code == 0, log[-3000:]
    expanded = await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"])
    assert expanded["spec"]["capacity"]["storage"] == "2Gi"
    assert '"reconcile pass finished" synced=' in log


async def test_empty_cluster_passes(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, tmp_path: Path
) -> None:
    code, log = await run_once(
        "sidecars.attacher", tmp_path, f"--kubeconfig={kubeconfig}", f"--csi-address={driver.address}"
    )
    assert code == 0, log[-3000:]
    assert '"reconcile pass finished" synced=0' in log


async def test_livenessprobe_once_fails_without_a_driver(tmp_path: Path) -> None:
    code, log = await run_once(
        "sidecars.livenessprobe",
        tmp_path,
        f"--csi-address=unix://{tmp_path}/none.sock",
        "--probe-timeout=200ms",
    )
    assert code == 1
    assert "did not appear within 0.2s" in log


async def test_livenessprobe_once_reports_a_driver_that_is_not_ready(
    driver: TestDriver, tmp_path: Path
) -> None:
    driver.ready = False
    code, log = await run_once("sidecars.livenessprobe", tmp_path, f"--csi-address={driver.address}")
    assert code == 1
    assert "500 driver responded but is not ready" in log
