"""HTTP endpoint: `/metrics` and health checks (`/healthz`, `/healthz/leader-election`) on one address.

Not aiohttp, whose import alone costs 12-14 MiB of RSS (a third of the node sidecars' 40 MiB budget):
HTTP/1.1 on `asyncio.start_server` streams, answering as Go's net/http does (headers in its order;
keep-alive unless `Connection: close` or HTTP/1.0; GET and HEAD; the mux's `404 page not found`; 405
otherwise), with limits against slow or bad clients (below). /metrics serves any `MetricsSource`
(common.metrics, or the livenessprobe's own), so this module never loads prometheus_client. `serve()`
is an ordinary task with a `finally`: cancelled, it closes the listening socket and every connection
under `asyncio.shield`.
Addresses use Go's syntax: `:8080`, `host:8080`, `[::1]:8080`; port 0 picks a free port (`bound_port`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import NamedTuple, Protocol

from common.errors import ConfigError, SidecarError
from common.logging import get_logger

log = get_logger(__name__)
_REASONS = {status.value: status.phrase for status in HTTPStatus}

Check = Callable[[], Awaitable[tuple[int, str]]]


class MetricsSource(Protocol):
    """What /metrics serves: `common.metrics.Metrics`, or the livenessprobe's `ProbeMetrics`."""

    def render(self) -> tuple[bytes, str]:
        """The body in the Prometheus text format, and its content type."""
        ...


TEXT = "text/plain; charset=utf-8"
MAX_HEAD_BYTES = 8192  # request line and headers (Go allows 1 MiB); more is answered 431
MAX_BODY_BYTES = 65536  # a request body is read and ignored; a longer one is answered 413
TIMEOUT = 10.0  # seconds to read a request (idle time included), and again to write the answer
BACKLOG = 4096  # pending connections, as Go (somaxconn); asyncio's 100 drops a burst of probes


class _Response(NamedTuple):
    """`headers` are the handler's own, written first; `sniffed` is the type Go detects from the body."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    sniffed: str = TEXT


def _error(status: int, body: str, *headers: tuple[str, str]) -> _Response:
    """What Go's `http.Error` writes."""
    own = (*headers, ("Content-Type", TEXT), ("X-Content-Type-Options", "nosniff"))
    return _Response(status, body.encode(), own, sniffed="")


class _Refused(Exception):
    """A bad request: answered with Go's text for `status`, then the connection is closed."""

    def __init__(self, status: int) -> None:
        self.response = _error(status, f"{status} {HTTPStatus(status).phrase}")


def parse_address(address: str, *, flag: str = "http-endpoint") -> tuple[str | None, int]:
    """Split a Go listen address into (host or None for all interfaces, port). Raises ConfigError."""
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address without brackets: Go says "too many colons"
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"invalid address {address!r} for --{flag}: want host:port, :port or [ipv6]:port")
    return host or None, int(port_text)


class HttpEndpoint:
    """The diagnostics server of one sidecar."""

    def __init__(
        self,
        address: str,
        *,
        metrics: MetricsSource | None,
        metrics_path: str = "/metrics",
        flag: str = "http-endpoint",
    ) -> None:
        self.address = address
        self._listen = parse_address(address, flag=flag)
        self._metrics = metrics
        self._metrics_path = metrics_path
        self._checks: dict[str, Check] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()
        self._started = asyncio.Event()

    def add_check(self, path: str, check: Check) -> None:
        """Serve `path` with `check() -> (status, body)` as text/plain (Go healthz answers `ok` with 200)."""
        if self._started.is_set():
            raise RuntimeError("add_check after the endpoint started")
        self._checks[path] = check

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0). Valid once `started()` returned."""
        if not self._started.is_set() or self._server is None:
            raise RuntimeError("the HTTP endpoint is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def started(self) -> None:
        """Wait until `serve()` listens."""
        await self._started.wait()

    async def serve(self) -> None:
        """Listen until cancelled. Raises SidecarError when the address cannot be bound (upstream exits 1)."""
        try:
            server = await asyncio.start_server(
                self._connection, *self._listen, limit=MAX_HEAD_BYTES, backlog=BACKLOG
            )
        except OSError as err:
            raise SidecarError(f"failed to listen on {self.address}: {err.strerror or err}") from err
        self._server = server
        try:
            self._started.set()
            log.info("HTTP endpoint listening", address=self.address, port=self.bound_port)
            await asyncio.Event().wait()
        finally:
            self._started.clear()  # from here on, a new connection is closed at once
            server.close()
            for connection in self._connections:
                connection.cancel()
            await asyncio.shield(asyncio.gather(*self._connections, return_exceptions=True))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client, in the task asyncio.start_server made for it: its requests in turn, then close."""
        task = asyncio.current_task()
        if task is None or not self._started.is_set():
            writer.close()
            return
        task.set_name(f"http connection {self.address}")
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (OSError, EOFError, asyncio.CancelledError):  # reset, timed out, hung up, or serve() ended
            pass  # ends the task normally: Python 3.11's start_server logs a cancelled one as an error
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open."""
        try:
            async with asyncio.timeout(TIMEOUT):
                method, path, keep_alive, connection = await _read_request(reader)
            response = await self._answer(method, path)
        except _Refused as refused:
            method, keep_alive, connection, response = "GET", False, "close", refused.response
        async with asyncio.timeout(TIMEOUT):
            writer.write(_encode(response, connection, with_body=method != "HEAD"))
            await writer.drain()
        return keep_alive

    async def _answer(self, method: str, path: str) -> _Response:
        check = self._checks.get(path)
        if check is None and (self._metrics is None or path != self._metrics_path):
            return _error(404, "404 page not found\n")
        if method not in ("GET", "HEAD"):
            return _error(405, "Method Not Allowed\n", ("Allow", "GET, HEAD"))
        try:
            if check is not None:
                status, text = await check()
                return _Response(status, text.encode())
            assert self._metrics is not None
            body, content_type = self._metrics.render()
            return _Response(200, body, (("Content-Type", content_type),), sniffed="")
        except Exception as err:  # a failing check is an unhealthy answer, not a crashed server
            log.error("health check failed", path=path, error=repr(err))
            return _Response(500, f"internal server error: {err}".encode())


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bool, str]:
    """(method, path, keep-alive?, the answer's Connection header or "") of one request; its body is
    read and ignored. Raises EOFError when the client hangs up first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")  # at most the reader's limit
    except asyncio.LimitOverrunError:
        raise _Refused(431) from None
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    fields = [line.partition(":") for line in lines]
    headers = {name.lower(): value.strip() for name, _, value in fields}
    length = headers.get("content-length", "0")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not all(colon for _, colon, _ in fields):
        raise _Refused(400)
    if "transfer-encoding" in headers or not (length.isascii() and length.isdigit()):
        raise _Refused(400)  # a chunked body is not read: Go would, but no probe sends one
    if int(length) > MAX_BODY_BYTES:
        raise _Refused(413)
    await reader.readexactly(int(length))
    method, target, version = parts
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":  # closes unless asked to keep alive, and then says so
        keep_alive = "keep-alive" in tokens and "close" not in tokens
        return method, target.partition("?")[0], keep_alive, "keep-alive" if keep_alive else ""
    return method, target.partition("?")[0], "close" not in tokens, "close" if "close" in tokens else ""


def _encode(response: _Response, connection: str, *, with_body: bool) -> bytes:
    """As Go writes it: the handler's headers, then Date, Content-Length, sniffed type, Connection."""
    reason = _REASONS.get(response.status, f"status code {response.status}")  # the latter as Go
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())  # http.TimeFormat (C locale)
    lines = [f"HTTP/1.1 {response.status} {reason}", *(f"{k}: {v}" for k, v in response.headers)]
    lines += [f"Date: {date}", f"Content-Length: {len(response.body)}"]
    lines += [f"Content-Type: {response.sniffed}"] if response.sniffed else []
    lines += [f"Connection: {connection}"] if connection else []
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + (response.body if with_body else b"")
