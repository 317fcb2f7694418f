"""Control endpoint: drive a test driver running in another process over HTTP + JSON.

``python -m testbed.csidriver --control-address 127.0.0.1:0`` serves this on an ephemeral port and
prints its URL on the first stdout line (see `testbed.csidriver.__main__`). All bodies are JSON;
errors answer ``400 {"error": "..."}``.

=======  ==================  ==============================================================
Method   Path                What
=======  ==================  ==============================================================
GET      /healthz            ``ok``
GET      /state              volumes, snapshots, publications, counts, faults, serving,
                             ready, starts, crashes, config (`TestDriver.dump`)
GET      /calls              ``{"calls": [...]}``, oldest first, secrets stripped;
                             ``?method=CreateVolume`` filters
DELETE   /calls              forget calls and counts
GET      /faults             ``{"faults": [...]}``
POST     /faults             add one: ``{"method": "CreateVolume", "kind": "error", "code":
                             "RESOURCE_EXHAUSTED", "message": "...", "count": 2, "match":
                             {"name": "pvc-1"}, "delay": 0.5, "timeout": null,
                             "restart_after": 1.0, "keep_state": true}`` → the fault with its id
DELETE   /faults             remove all (``?method=X``: those of X)
DELETE   /faults/{id}        remove one (404 if gone)
POST     /crash              ``{"restart_after": 1.0 | null, "keep_state": true}``
POST     /restart            ``{"keep_state": true, "down_for": 0}``
POST     /ready              ``{"ready": true | false | null}`` (what Probe answers)
POST     /config             replace config fields, e.g. ``{"controller_capabilities":
                             ["CREATE_DELETE_VOLUME"], "capacity": 1073741824}``
=======  ==================  ==============================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from testbed.csidriver.driver import TestDriver
from testbed.csidriver.faults import Fault

_FROZENSET_FIELDS = ("controller_capabilities", "node_capabilities", "accepted_mutable_parameters")

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(route: Route) -> Route:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await route(request)
        except (ValueError, TypeError, KeyError) as err:
            return web.json_response({"error": str(err)}, status=400)

    return guarded


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def make_app(driver: TestDriver) -> web.Application:
    """The aiohttp application controlling `driver`."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def state(_: web.Request) -> web.StreamResponse:
        return web.json_response(driver.dump())

    async def calls(request: web.Request) -> web.StreamResponse:
        method = request.query.get("method")
        chosen = driver.calls.of(method) if method else list(driver.calls)
        return web.json_response({"calls": [c.as_dict() for c in chosen]})

    async def clear_calls(_: web.Request) -> web.StreamResponse:
        driver.calls.clear()
        return web.json_response({})

    async def faults(_: web.Request) -> web.StreamResponse:
        return web.json_response({"faults": [f.as_dict() for f in driver.faults]})

    async def add_fault(request: web.Request) -> web.StreamResponse:
        fault = driver.faults.add_fault(Fault.from_dict(await _body(request)))
        return web.json_response(fault.as_dict())

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        driver.faults.clear(request.query.get("method"))
        return web.json_response({})

    async def remove_fault(request: web.Request) -> web.StreamResponse:
        found = driver.faults.remove(int(request.match_info["id"]))
        return web.json_response({"removed": found}, status=200 if found else 404)

    async def crash(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        restart_after = body.get("restart_after")
        await driver.crash(
            restart_after=None if restart_after is None else float(restart_after),
            keep_state=bool(body.get("keep_state", True)),
        )
        return web.json_response({"serving": driver.serving})

    async def restart(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        await driver.restart(
            keep_state=bool(body.get("keep_state", True)), down_for=float(body.get("down_for", 0))
        )
        return web.json_response({"serving": driver.serving})

    async def ready(request: web.Request) -> web.StreamResponse:
        value = (await _body(request)).get("ready")
        if value is not None and not isinstance(value, bool):
            raise ValueError("ready must be true, false or null")
        driver.ready = value
        return web.json_response({"ready": driver.ready})

    async def config(request: web.Request) -> web.StreamResponse:
        changes = await _body(request)
        for key in _FROZENSET_FIELDS:
            if key in changes:
                changes[key] = frozenset(changes[key])
        driver.config = dataclasses.replace(driver.config, **changes)
        return web.json_response(driver.dump()["config"])

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/state", state),
            web.get("/calls", calls),
            web.delete("/calls", clear_calls),
            web.get("/faults", faults),
            web.post("/faults", _guarded(add_fault)),
            web.delete("/faults", clear_faults),
            web.delete("/faults/{id}", _guarded(remove_fault)),
            web.post("/crash", _guarded(crash)),
            web.post("/restart", _guarded(restart)),
            web.post("/ready", _guarded(ready)),
            web.post("/config", _guarded(config)),
        ]
    )
    return app


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" (port 0 for any free port; "[::1]:0" for IPv6) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdecimal():
        raise ValueError(f"control address must be host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@asynccontextmanager
async def serve_control(driver: TestDriver, address: str) -> AsyncIterator[str]:
    """Serve the control endpoint on `address` ("host:port"); yields its base URL."""
    host, port = parse_address(address)
    runner = web.AppRunner(make_app(driver), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
