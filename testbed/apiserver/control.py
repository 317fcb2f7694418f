"""The `/testbed/...` HTTP API: fault injection, request counters and state for out-of-process tools.

Not a Kubernetes API (nothing under it is a resource); JSON in, JSON out, same bearer token as the
Kubernetes API when the server has one. Each endpoint mirrors an `ApiServer` method:

    GET    /testbed/state                 server.state()
    GET    /testbed/requests              server.requests.as_json()   (?records=false for counters only)
    DELETE /testbed/requests              server.requests.reset()
    POST   /testbed/faults                server.faults.fail(...)     {"status": 429, "count": 2,
                                                  "verb": "patch", "resource": "persistentvolumes",
                                                  "subresource": "", "retryAfter": 1}
    POST   /testbed/latency               server.faults.add_latency(...) {"seconds": 0.2, "count": 5, ...}
    DELETE /testbed/faults                server.faults.clear()
    DELETE /testbed/faults/{id}           server.faults.remove(id)
    POST   /testbed/watches/close         server.close_watches()
    POST   /testbed/watches/expire        server.faults.expire_next_watches(count) {"count": 1}
    POST   /testbed/compact               server.compact()
    POST   /testbed/restart               server.restart(downtime)    {"downtime": 0.5}; answers 202 first
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from testbed.apiserver import errors
from testbed.apiserver.handlers import json_response, read_body

if TYPE_CHECKING:
    from testbed.apiserver.server import ApiServer

_MATCH_FIELDS = ("verb", "resource", "subresource", "namespace", "name")


def _match_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in _MATCH_FIELDS if body.get(k) is not None}


class ControlApi:
    """Routes `/testbed/...` requests to one `ApiServer`."""

    def __init__(self, server: ApiServer):
        self.server = server
        self._restart: asyncio.Task[None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except errors.ApiError as exc:
            return json_response(exc.code, exc.status)
        except (KeyError, TypeError, ValueError) as exc:
            return json_response(400, errors.BadRequest(f"bad testbed request: {exc!r}").status)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        server, method = self.server, request.method
        path = request.path.rstrip("/")
        body = await read_body(request) if request.can_read_body else None
        body = body if isinstance(body, dict) else {}
        if path == "/testbed/state" and method == "GET":
            return json_response(200, server.state())
        if path == "/testbed/requests" and method == "GET":
            records = request.query.get("records", "true") != "false"
            return json_response(200, server.requests.as_json(with_records=records))
        if path == "/testbed/requests" and method == "DELETE":
            server.requests.reset()
            return json_response(200, {})
        if path == "/testbed/faults" and method == "POST":
            rule = server.faults.fail(
                int(body.get("count", 1)),
                status=int(body.get("status", 500)),
                retry_after=int(body.get("retryAfter", 1)),
                message=str(body.get("message", "injected fault")),
                **_match_kwargs(body),
            )
            return json_response(201, {"id": rule.id})
        if path == "/testbed/latency" and method == "POST":
            count = body.get("count")
            latency = server.faults.add_latency(
                float(body["seconds"]), count=None if count is None else int(count), **_match_kwargs(body)
            )
            return json_response(201, {"id": latency.id})
        if path == "/testbed/faults" and method == "DELETE":
            server.faults.clear()
            return json_response(200, {})
        if path.startswith("/testbed/faults/") and method == "DELETE":
            removed = server.faults.remove(int(path.rsplit("/", 1)[1]))
            return json_response(200 if removed else 404, {"removed": removed})
        if path == "/testbed/watches/close" and method == "POST":
            return json_response(200, {"closed": server.close_watches()})
        if path == "/testbed/watches/expire" and method == "POST":
            server.faults.expire_next_watches(int(body.get("count", 1)))
            return json_response(200, {"expiringWatches": server.faults.expiring_watches})
        if path == "/testbed/compact" and method == "POST":
            return json_response(200, {"resourceVersion": server.compact()})
        if path == "/testbed/restart" and method == "POST":
            downtime = float(body.get("downtime", 0.0))
            self._restart = asyncio.get_running_loop().create_task(
                self._restart_later(downtime), name="testbed-apiserver-restart"
            )
            return json_response(202, {"downtime": downtime})
        raise errors.resource_not_found()

    async def _restart_later(self, downtime: float) -> None:
        await asyncio.sleep(0.05)  # let the 202 reach the client before the listener closes
        await self.server.restart(downtime=downtime)

    async def wait_restarted(self) -> None:
        """Wait for a restart requested over HTTP to finish (for an orderly shutdown)."""
        if self._restart is not None:
            await asyncio.gather(self._restart, return_exceptions=True)
