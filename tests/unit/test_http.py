"""The HTTP endpoint serves metrics and health checks, parses Go addresses, and closes when cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from common.errors import ConfigError, SidecarError
from common.http import HttpEndpoint, parse_address
from common.metrics import Metrics

GOLDEN = Path(__file__).parent.parent / "golden"


async def ok() -> tuple[int, str]:
    return 200, "ok"


async def start(endpoint: HttpEndpoint) -> asyncio.Task[None]:
    task = asyncio.create_task(endpoint.serve(), name="http")
    started = asyncio.create_task(endpoint.started(), name="http started")
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)
        task.result()
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def golden_response(name: str) -> tuple[int, str, str]:
    """(status, content type, body) of a captured Go response."""
    head, _, body = (GOLDEN / name).read_text().partition("\n\n")
    lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"], body


async def test_serves_metrics_and_checks_then_refuses_after_cancel() -> None:
    metrics = Metrics()
    metrics.workqueue("claims").on_add()
    endpoint = HttpEndpoint("127.0.0.1:0", metrics=metrics)

    async def leader() -> tuple[int, str]:
        return 500, "internal server error: failed election to renew leadership on lease x"

    endpoint.add_check("/healthz", ok)
    endpoint.add_check("/healthz/leader-election", leader)
    task = await start(endpoint)
    url = f"http://127.0.0.1:{endpoint.bound_port}"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 200
                assert 'workqueue_adds_total{name="claims"} 1\n' in await response.text()
            status, content_type, body = golden_response("12-provisioner-healthz-leader-election.txt")
            async with session.get(f"{url}/healthz") as response:
                assert (response.status, response.headers["Content-Type"], await response.text()) == (
                    status,
                    content_type,
                    body,
                )
            async with session.get(f"{url}/healthz/leader-election") as response:
                assert response.status == 500
                assert (await response.text()).startswith("internal server error: failed election")
            async with session.get(f"{url}/nothing-here") as response:
                assert response.status == 404
        finally:
            await stop(task)
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"{url}/healthz")
    assert task.cancelled()


async def test_custom_metrics_path_and_no_metrics() -> None:
    endpoint = HttpEndpoint("127.0.0.1:0", metrics=Metrics(), metrics_path="/custom")
    task = await start(endpoint)
    url = f"http://127.0.0.1:{endpoint.bound_port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/custom") as response:
                assert response.status == 200
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 404
    finally:
        await stop(task)

    bare = HttpEndpoint("127.0.0.1:0", metrics=None)
    bare.add_check("/healthz", ok)
    task = await start(bare)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{bare.bound_port}/metrics") as response,
        ):
            assert response.status == 404
    finally:
        await stop(task)


async def test_a_check_that_raises_answers_500() -> None:
    async def broken() -> tuple[int, str]:
        raise RuntimeError("driver gone")

    endpoint = HttpEndpoint("127.0.0.1:0", metrics=None)
    endpoint.add_check("/healthz", broken)
    task = await start(endpoint)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{endpoint.bound_port}/healthz") as response,
        ):
            assert response.status == 500
            assert "driver gone" in await response.text()
    finally:
        await stop(task)


async def test_a_busy_port_is_a_one_line_error() -> None:
    first = HttpEndpoint("127.0.0.1:0", metrics=None)
    task = await start(first)
    try:
        second = HttpEndpoint(f"127.0.0.1:{first.bound_port}", metrics=None)
        with pytest.raises(SidecarError, match=r"failed to listen on 127\.0\.0\.1:"):
            await second.serve()
    finally:
        await stop(task)


async def test_checks_cannot_be_added_while_serving() -> None:
    endpoint = HttpEndpoint("127.0.0.1:0", metrics=None)
    task = await start(endpoint)
    try:
        with pytest.raises(RuntimeError):
            endpoint.add_check("/late", ok)
    finally:
        await stop(task)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        (":8080", (None, 8080)),
        ("0.0.0.0:9808", ("0.0.0.0", 9808)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_go_addresses(address: str, parsed: tuple[str | None, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["8080", "", "host", "host:", "host:http", "::1:8080", ":65536", ":-1"])
def test_bad_addresses_name_the_flag_and_value(address: str) -> None:
    with pytest.raises(ConfigError) as err:
        HttpEndpoint(address, metrics=None, flag="metrics-address")
    assert "--metrics-address" in str(err.value)
    assert repr(address) in str(err.value)
