"""livenessprobe end to end: the real entrypoint against the CSI test driver, asked over HTTP like kubelet."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from kit import ASYNCIO_COMPLAINTS, SidecarProcess, eventually, rss_mib
from kit import stop_cleanly as kit_stop_cleanly

from testbed.csidriver import TestDriver

stop_cleanly = functools.partial(kit_stop_cleanly, forbidden=(*ASYNCIO_COMPLAINTS, "Traceback"))
"""SIGTERM: exit 0 and a clean log (kit.stop_cleanly with this module's bounds)."""

GOLDEN = Path(__file__).parent.parent / "golden"
MODULE = "sidecars.livenessprobe"
DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
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


def without_values(metrics: str) -> list[str]:
    """The exposition with the measured numbers (sums, start time) blanked out."""
    return [
        re.sub(r"(_sum\{.*\}|process_start_time_seconds) \S+$", r"\1 X", line)
        for line in metrics.splitlines()
    ]


async def http_ports(process: SidecarProcess, count: int = 1) -> dict[str, int]:
    """address flag value → bound port, for each HTTP endpoint the sidecar started."""

    def found() -> dict[str, int] | None:
        assert process.running(), process.log()
        ports = re.findall(r'"HTTP endpoint listening" address="([^"]*)" port=(\d+)', process.log())
        return {address: int(port) for address, port in ports} if len(ports) >= count else None

    return await eventually(found, timeout=20, message="the HTTP endpoint")


async def http_port(process: SidecarProcess) -> int:
    (port,) = (await http_ports(process)).values()
    return port


async def get(port: int, path: str = "/healthz") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as rsp:
        return rsp.status, rsp.headers["Content-Type"], await rsp.text()


def start_probe(sidecar: Start, address: str, *extra: str) -> SidecarProcess:
    return sidecar(MODULE, f"--csi-address={address}", "--http-endpoint=127.0.0.1:0", *extra)


async def test_healthz_and_metrics_match_upstream(sidecar: Start, driver: TestDriver) -> None:
    probe = start_probe(sidecar, driver.address)
    port = await http_port(probe)
    assert await get(port) == golden_response("14-livenessprobe-healthz.txt")
    status, content_type, metrics = await get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert without_values(metrics) == without_values((GOLDEN / "15-livenessprobe-metrics.txt").read_text())
    await stop_cleanly(probe)


async def test_not_ready_and_failing_driver_give_500(sidecar: Start, driver: TestDriver) -> None:
    probe = start_probe(sidecar, driver.address)
    port = await http_port(probe)
    driver.ready = False
    assert await get(port) == (500, "text/plain; charset=utf-8", "driver responded but is not ready")
    driver.ready = True
    driver.faults.add(
        "Probe", "error", code=grpc.StatusCode.UNAVAILABLE, message="controller offline", count=1
    )
    assert (await get(port))[::2] == (500, "rpc error: code = Unavailable desc = controller offline")
    assert (await get(port))[::2] == (200, "ok")
    assert "Driver responded but is not ready" in probe.log()
    await stop_cleanly(probe)


async def test_hung_driver_fails_within_the_probe_timeout(sidecar: Start, driver: TestDriver) -> None:
    probe = start_probe(sidecar, driver.address, "--probe-timeout=1s")
    port = await http_port(probe)
    assert (await get(port))[0] == 200
    driver.faults.add("Probe", "hang")
    loop = asyncio.get_running_loop()
    for _ in range(2):  # the second one runs on the channel that replaced the first
        started = loop.time()
        assert (await get(port))[::2] == (500, DEADLINE)
        assert 1.0 <= loop.time() - started <= 1.2
    driver.faults.clear()
    assert (await get(port))[::2] == (200, "ok")
    await stop_cleanly(probe)


async def test_survives_the_driver_restarting(sidecar: Start, driver: TestDriver) -> None:
    probe = start_probe(sidecar, driver.address, "--probe-timeout=1s")
    port = await http_port(probe)
    assert (await get(port))[0] == 200
    await driver.crash()
    assert (await get(port))[0] == 500  # gone: nothing answers within the timeout
    await driver.start()
    assert (await get(port))[::2] == (200, "ok")
    await driver.crash(restart_after=0.3)
    assert (await get(port))[::2] == (200, "ok")  # back within the probe timeout
    assert driver.starts == 3
    assert probe.running()
    await stop_cleanly(probe)


async def test_concurrent_probes(sidecar: Start, driver: TestDriver) -> None:
    probe = start_probe(sidecar, driver.address)
    port = await http_port(probe)
    results = await asyncio.gather(*(get(port) for _ in range(50)))
    assert {r[::2] for r in results} == {(200, "ok")}
    assert driver.calls.counts["Probe"] == 50
    metrics = (await get(port, "/metrics"))[2]
    assert (
        'csi_sidecar_operations_seconds_count{driver_name="hostpath.csi.k8s.io",grpc_status_code="OK",'
        'method_name="/csi.v1.Identity/Probe"} 50' in metrics
    )
    await stop_cleanly(probe)


async def test_waits_for_a_driver_that_starts_later(sidecar: Start, socket_dir: Path) -> None:
    address = f"unix://{socket_dir}/late.sock"
    probe = start_probe(sidecar, address)
    await eventually(lambda: "connecting to CSI driver" in probe.log(), timeout=20, message="connecting")
    late = TestDriver()
    async with late.serve(address):
        port = await http_port(probe)  # /healthz is served only once the driver's name is known
        assert (await get(port))[::2] == (200, "ok")
        await stop_cleanly(probe)


async def test_health_port_and_separate_metrics_address(sidecar: Start, driver: TestDriver) -> None:
    probe = sidecar(
        MODULE, f"--csi-address={driver.address}", "--health-port=0", "--metrics-address=127.0.0.1:0"
    )
    ports = await http_ports(probe, count=2)
    health, metrics = ports["0.0.0.0:0"], ports["127.0.0.1:0"]
    assert (await get(health))[::2] == (200, "ok")
    assert (await get(health, "/metrics"))[0] == 404
    assert "csi_sidecar_operations_seconds_count" in (await get(metrics, "/metrics"))[2]
    assert (await get(metrics))[0] == 404
    await stop_cleanly(probe)


@pytest.mark.parametrize(
    "flags",
    [
        ("--health-port=9999", "--http-endpoint=127.0.0.1:0"),
        ("--metrics-address=:8080", "--http-endpoint=127.0.0.1:0"),
    ],
)
async def test_refused_flag_combinations_exit_1(sidecar: Start, flags: tuple[str, ...]) -> None:
    probe = sidecar(MODULE, "--csi-address=/nonexistent.sock", *flags)
    assert await probe.wait(20) == 1
    assert "livenessprobe: Only one of" in probe.log()


async def test_version(sidecar: Start) -> None:
    process = sidecar(MODULE, "--version")
    assert await process.wait(20) == 0
    assert re.search(r"livenessprobe v\S+", process.log())


async def test_idle_rss_stays_small(sidecar: Start, driver: TestDriver) -> None:
    """Guards the no-Kubernetes-client diet: importing kubernetes_asyncio alone adds ~35 MiB."""
    probe = start_probe(sidecar, driver.address)
    port = await http_port(probe)
    assert (await get(port))[0] == 200
    await asyncio.sleep(1.0)  # idle
    rss = rss_mib(probe.pid)
    print(f"livenessprobe idle RSS: {rss:.1f} MiB")
    assert rss < IDLE_RSS_CEILING_MIB
    await stop_cleanly(probe)
