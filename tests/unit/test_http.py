"""The HTTP endpoint serves metrics and health checks, parses Go addresses, and closes when cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common import http
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


# The wire, byte by byte, on raw sockets: what kubelet's and Prometheus' Go clients see.

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """An endpoint serving /healthz (`ok`) and /metrics; its port."""
    endpoint = HttpEndpoint("127.0.0.1:0", metrics=Metrics(process_collector=False))
    endpoint.add_check("/healthz", ok)
    task = await start(endpoint)
    try:
        yield endpoint.bound_port
    finally:
        await stop(task)


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[str, list[str], bytes]:
    """(status line, header lines in order, body) of the next response on a connection."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *headers = raw.decode("latin-1").split("\r\n")[:-2]
    length = next(int(h.split(": ")[1]) for h in headers if h.startswith("Content-Length: "))
    body = b"" if head else await asyncio.wait_for(reader.readexactly(length), 5)
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection, sending nothing more, within 5 s."""
    return await asyncio.wait_for(reader.read(), 5) == b""


def without_date(lines: list[str]) -> list[str]:
    """The lines with the one `Date:` header's value masked."""
    assert len([line for line in lines if line.startswith("Date: ")]) == 1
    return ["Date: *" if line.startswith("Date: ") else line for line in lines]


def is_now(headers: list[str]) -> bool:
    """Whether the `Date:` header is now, in Go's http.TimeFormat."""
    date = next(h.removeprefix("Date: ") for h in headers if h.startswith("Date: "))
    assert re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
    return abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5


async def test_healthz_is_gos_answer_byte_for_byte_on_a_kept_connection(port: int) -> None:
    golden = (GOLDEN / "12-provisioner-healthz-leader-election.txt").read_text().split("\n")
    async with connection(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.31\r\n\r\n")
        status, headers, body = await response(reader)
        assert [status, *without_date(headers), "", body.decode()] == without_date(golden)
        assert is_now(headers)
        writer.write(b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection
        assert (await response(reader))[2] == b"ok"


async def test_pipelined_requests_answered_in_order_head_without_body_post_drained(port: int) -> None:
    async with connection(port) as (reader, writer):
        writer.write(
            b"HEAD /healthz HTTP/1.1\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\n\r\n"
            b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /nothing-here HTTP/1.1\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\n\r\n"
        )
        status, headers, _ = await response(reader, head=True)
        assert (status, headers[1:]) == (
            "HTTP/1.1 200 OK",
            ["Content-Length: 2", f"Content-Type: {http.TEXT}"],
        )
        status, headers, body = await response(reader)  # garbled had HEAD sent a body
        assert (status, headers[0]) == (
            "HTTP/1.1 200 OK",
            "Content-Type: text/plain; version=0.0.4; charset=utf-8",
        )
        assert body.startswith(b"# HELP process_start_time_seconds")
        status, headers, body = await response(reader)  # garbled had "hello" not been read
        assert (status, body) == ("HTTP/1.1 405 Method Not Allowed", b"Method Not Allowed\n")
        assert headers[:3] == [
            "Allow: GET, HEAD",
            f"Content-Type: {http.TEXT}",
            "X-Content-Type-Options: nosniff",
        ]
        status, headers, body = await response(reader)
        assert (status, headers[:2], body) == (  # Go's mux, via http.Error
            "HTTP/1.1 404 Not Found",
            [f"Content-Type: {http.TEXT}", "X-Content-Type-Options: nosniff"],
            b"404 page not found\n",
        )
        assert (await response(reader))[2] == b"ok"


@pytest.mark.parametrize(
    ("request_head", "connection_header", "kept"),
    [
        (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "Connection: close", False),
        (b"GET /healthz HTTP/1.1\r\nConnection: Keep-Alive, Upgrade\r\n\r\n", None, True),
        (b"GET /healthz HTTP/1.0\r\n\r\n", None, False),
        (b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "Connection: keep-alive", True),
    ],
)
async def test_connection_header_and_http_1_0_decide_keep_alive_as_go(
    port: int, request_head: bytes, connection_header: str | None, kept: bool
) -> None:
    async with connection(port) as (reader, writer):
        writer.write(request_head)
        status, headers, body = await response(reader)
        assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
        assert [h for h in headers if h.startswith("Connection:")] == (
            [connection_header] if connection_header else []
        )
        if kept:
            writer.write(request_head)
            assert (await response(reader))[2] == b"ok"
        else:
            assert await closed(reader)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * http.MAX_HEAD_BYTES + b"\r\n\r\n",
            "431 Request Header Fields Too Large",
        ),
        (
            b"POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "400 Bad Request",
        ),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", "400 Bad Request"),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", "413 Request Entity Too Large"),
        (b"GET /healthz\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", "400 Bad Request"),
    ],
)
async def test_bad_requests_are_answered_then_closed(port: int, request_head: bytes, status: str) -> None:
    async with connection(port) as (reader, writer):
        writer.write(request_head)
        line, headers, body = await response(reader)
        assert (line, body, headers[-1]) == (f"HTTP/1.1 {status}", status.encode(), "Connection: close")
        assert await closed(reader)


async def test_a_slow_or_idle_client_is_closed_while_others_are_served(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "TIMEOUT", 0.02)
    async with connection(port) as (slow, slow_writer), connection(port) as (idle, _):
        slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the empty line
        assert await closed(slow)
        assert await closed(idle)
    monkeypatch.undo()
    async with connection(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await response(reader))[2] == b"ok"


async def test_cancel_closes_every_open_connection_and_cancels_running_checks() -> None:
    running, cancelled = asyncio.Event(), asyncio.Event()

    async def busy() -> tuple[int, str]:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    endpoint = HttpEndpoint("127.0.0.1:0", metrics=None)
    endpoint.add_check("/busy", busy)
    endpoint.add_check("/healthz", ok)
    task = await start(endpoint)
    port = endpoint.bound_port
    async with connection(port) as (kept, kept_writer), connection(port) as (waiting, waiting_writer):
        kept_writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await response(kept))[2] == b"ok"
        waiting_writer.write(b"GET /busy HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(running.wait(), 5)
        await stop(task)
        assert await closed(kept)
        assert await closed(waiting)
        assert cancelled.is_set()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_many_simultaneous_probes(port: int) -> None:
    async def probe() -> bytes:
        async with connection(port) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            return (await response(reader))[2]

    assert await asyncio.gather(*(probe() for _ in range(200))) == [b"ok"] * 200


def test_a_process_without_metrics_loads_neither_aiohttp_nor_prometheus_client() -> None:
    code = "import sys, common.http; print('aiohttp' in sys.modules, 'prometheus_client' in sys.modules)"
    root = Path(__file__).parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]
