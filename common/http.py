"""HTTP endpoint: `/metrics` and health checks (`/healthz`, `/healthz/leader-election`) on one address.

An ordinary task with a `finally`: `serve()` starts an aiohttp `AppRunner(handle_signals=False)` and
`TCPSite`, waits until cancelled, and cleans up under `asyncio.shield`, so a cancelled endpoint has
closed its socket by the time the task ends. Addresses use Go's syntax: `:8080` (all interfaces),
`host:8080`, `[::1]:8080`; port 0 picks a free port (`bound_port`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from common.errors import ConfigError, SidecarError
from common.logging import get_logger
from common.metrics import Metrics

log = get_logger(__name__)

Check = Callable[[], Awaitable[tuple[int, str]]]


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
        metrics: Metrics | None,
        metrics_path: str = "/metrics",
        flag: str = "http-endpoint",
    ) -> None:
        self.address = address
        self._host, self._port = parse_address(address, flag=flag)
        self._metrics = metrics
        self._metrics_path = metrics_path
        self._checks: dict[str, Check] = {}
        self._runner: web.AppRunner | None = None
        self._started = asyncio.Event()

    def add_check(self, path: str, check: Check) -> None:
        """Serve `path` with `check() -> (status, body)` as text/plain (Go healthz answers `ok` with 200)."""
        if self._runner is not None:
            raise RuntimeError("add_check after the endpoint started")
        self._checks[path] = check

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0). Valid once `started()` returned."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP endpoint is not listening")
        port: int = self._runner.addresses[0][1]
        return port

    async def started(self) -> None:
        """Wait until `serve()` listens."""
        await self._started.wait()

    async def serve(self) -> None:
        """Listen until cancelled. Raises SidecarError when the address cannot be bound (upstream exits 1)."""
        app = web.Application()
        if self._metrics is not None:
            app.router.add_get(self._metrics_path, self._serve_metrics)
        for path, check in self._checks.items():
            app.router.add_get(path, _check_handler(check))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, self._host, self._port).start()
            except OSError as err:
                raise SidecarError(f"failed to listen on {self.address}: {err.strerror or err}") from err
            self._runner = runner
            self._started.set()
            log.info("HTTP endpoint listening", address=self.address, port=self.bound_port)
            await asyncio.Event().wait()
        finally:
            self._runner = None
            self._started.clear()
            await asyncio.shield(runner.cleanup())

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        assert self._metrics is not None  # the route exists only with metrics
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})


def _check_handler(check: Check) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_: web.Request) -> web.Response:
        try:
            status, body = await check()
        except Exception as err:  # a failing check is an unhealthy answer, not a crashed server
            log.error("health check failed", error=repr(err))
            status, body = 500, f"internal server error: {err}"
        return web.Response(status=status, text=body, content_type="text/plain", charset="utf-8")

    return handle
