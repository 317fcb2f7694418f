"""Fixtures for integration tests: the test bed (API server, CSI test driver) and real sidecar processes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kit import SidecarProcess, remove_tree, short_tempdir

from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from testbed.apiserver import ApiServer
from testbed.csidriver import DriverConfig, TestDriver


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    """An in-process test-bed API server (bookmarks every 0.2 s to keep watches lively)."""
    async with ApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: ApiServer) -> str:
    assert apiserver.kubeconfig is not None
    return str(apiserver.kubeconfig)


@pytest.fixture
async def kube(kubeconfig: str) -> AsyncIterator[KubeClient]:
    """Our own API client, unthrottled, for the test's reads and writes."""
    from common.backoff import TokenBucket

    client = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig),
        limiter=TokenBucket(math.inf, 1),
        user_agent="integration-test",
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (paths must stay under 108 bytes)."""
    path = short_tempdir()
    try:
        yield path
    finally:
        remove_tree(path)


@pytest.fixture
def driver_config() -> DriverConfig:
    """Override in a test module (or parametrize) to change the driver's capabilities."""
    return DriverConfig()


@pytest.fixture
async def driver(socket_dir: Path, driver_config: DriverConfig) -> AsyncIterator[TestDriver]:
    """The CSI test driver serving on `<socket_dir>/csi.sock`."""
    test_driver = TestDriver(driver_config)
    async with test_driver.serve(f"unix://{socket_dir}/csi.sock"):
        yield test_driver


@pytest.fixture
async def sidecar(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., SidecarProcess]]:
    """Start real sidecar processes: `sidecar("sidecars.attacher", "--csi-address=...", ...)`.

    Every process still running at teardown gets SIGTERM; a test that failed shows each log's tail.
    """
    started: list[SidecarProcess] = []

    def start(module: str, *args: str, env: dict[str, str] | None = None) -> SidecarProcess:
        process = SidecarProcess(module, args, log_dir=tmp_path, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running():
            try:
                await process.stop()
            except AssertionError:
                pass
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in started:
            print(f"----- {process.module} log (tail) -----\n{process.log()[-6000:]}")
