"""The test-bed API server: the store served over HTTP(S) like kube-apiserver, with its fault-injection knobs.

::

    async with ApiServer(tls=True) as server:        # or ApiServer(ApiServerOptions(...))
        server.url                                   # https://127.0.0.1:PORT
        server.kubeconfig                            # a kubeconfig file kubectl and kubernetes-asyncio accept
        server.store                                 # the Store, for in-process controllers and assertions
        server.faults.fail(2, status=429, verb="patch", resource="persistentvolumes")
        server.requests.count(verb="update", resource="persistentvolumeclaims")
        await server.restart(downtime=0.5)           # same port, state kept (etcd survives)

With TLS the server generates a CA and a certificate, requires the bearer token written in the
kubeconfig (401 otherwise), and the kubeconfig carries the CA, so clients take the same code path as
against a real cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from testbed.apiserver import errors, kubeconfig, tls
from testbed.apiserver.control import ControlApi
from testbed.apiserver.faults import Faults
from testbed.apiserver.handlers import USER, ApiHandler, error_response
from testbed.apiserver.requestlog import RequestLog
from testbed.apiserver.store import Store

log = logging.getLogger(__name__)
_ANONYMOUS_PATHS = ("/healthz", "/livez", "/readyz", "/version")
MAX_BODY = 3 * 1024 * 1024
"""kube-apiserver's request body limit."""


@dataclass(frozen=True, kw_only=True)
class ApiServerOptions:
    """How to run the test-bed API server."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one (kept across restarts)."""
    tls: bool = False
    """Serve HTTPS with a generated CA and require the bearer token."""
    token: str | None = None
    """Bearer token to require; generated when `tls` is on and this is None. Also usable over HTTP."""
    history_size: int = 5000
    """Changes kept for watch resumption and consistent list pages (older: 410 Expired)."""
    bookmark_interval: float = 60.0
    """Seconds a bookmark-enabled watch may stay silent before a BOOKMARK (kube-apiserver: about a minute)."""
    storage_object_in_use_protection: bool = True
    """The admission plugin that adds kubernetes.io/pvc-protection and pv-protection finalizers."""
    kubeconfig: str | None = None
    """Where to write the kubeconfig; a private temporary file when None."""
    request_log_size: int = 20_000
    """Request records kept by `requests` (counters are never truncated)."""


class ApiServer:
    """One API server: a `Store`, its HTTP(S) listener, `faults` and the `requests` log."""

    def __init__(
        self, options: ApiServerOptions | None = None, /, *, store: Store | None = None, **overrides: Any
    ):
        self.options = replace(options or ApiServerOptions(), **overrides)
        opts = self.options
        self.store = store or Store(
            history_size=opts.history_size,
            bookmark_interval=opts.bookmark_interval,
            storage_object_in_use_protection=opts.storage_object_in_use_protection,
        )
        self.faults = Faults()
        self.requests = RequestLog(opts.request_log_size)
        self.token = opts.token or (secrets.token_urlsafe(24) if opts.tls else None)
        self._port = opts.port
        self._runner: web.AppRunner | None = None
        self._tmpdir: Path | None = None
        self._tls: tls.TlsFiles | None = None
        self._api = ApiHandler(
            self.store, self.faults, self.requests, server_address=lambda: f"{opts.host}:{self._port}"
        )
        self._control = ControlApi(self)
        self.kubeconfig: Path | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Generate TLS material if needed, listen, and write the kubeconfig."""
        self._tmpdir = Path(tempfile.mkdtemp(prefix="testbed-apiserver-"))
        if self.options.tls:
            self._tls = await asyncio.to_thread(tls.generate, self._tmpdir / "pki", self.options.host)
        await self.start_http()
        path = Path(self.options.kubeconfig) if self.options.kubeconfig else self._tmpdir / "kubeconfig"
        ca = self._tls.ca_cert if self._tls else None
        self.kubeconfig = kubeconfig.write(path, kubeconfig.render(self.url, token=self.token, ca_cert=ca))

    async def stop(self) -> None:
        await self._control.wait_restarted()
        await self.stop_http()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def start_http(self) -> None:
        """Listen on the configured port (the same one again after `stop_http`)."""
        if self._runner is not None:
            return
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.options.host else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.options.host, self._port))
        self._port = sock.getsockname()[1]
        runner = web.AppRunner(
            self._app(),
            handle_signals=False,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            access_log=None,
        )
        await runner.setup()
        ssl_context = self._tls.server_context() if self._tls else None
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        self._runner = runner
        log.info("test-bed API server listening on %s", self.url)

    async def stop_http(self) -> None:
        """Stop listening and drop every connection; watches end as they would when kube-apiserver stops."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self.store.close_watches()
        await runner.cleanup()

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop and start again on the same port after `downtime` seconds; the store (etcd) is kept."""
        await self.stop_http()
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start_http()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._authenticate])
        app.router.add_route("*", "/testbed/{tail:.*}", self._control.handle)
        app.router.add_route("*", "/{tail:.*}", self._api.handle)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None and not request.path.startswith(_ANONYMOUS_PATHS):
            if request.headers.get("Authorization", "") != f"Bearer {self.token}":
                return error_response(errors.Unauthorized("Unauthorized", details=None))
            request[USER] = "testbed-admin"
        response: web.StreamResponse = await handler(request)
        return response

    # ---- information and knobs -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"{'https' if self.options.tls else 'http'}://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def ca_cert(self) -> Path | None:
        """The CA certificate clients must trust (TLS only)."""
        return self._tls.ca_cert if self._tls else None

    @property
    def serving(self) -> bool:
        return self._runner is not None

    def close_watches(self) -> int:
        """End every open watch now (clients see the stream end and re-watch)."""
        return self.store.close_watches()

    def compact(self) -> int:
        """Compact the history now: watches and continue tokens from before get 410."""
        return self.store.compact()

    def state(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "serving": self.serving,
            "store": self.store.state(),
            "faults": self.faults.state(),
        }
