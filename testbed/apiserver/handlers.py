"""The Kubernetes HTTP API over the store: routing, bodies, query parameters, watch streams, errors.

Thin on purpose: every semantic lives in `Store`; this module turns requests into store calls and
answers into the bytes kube-apiserver would send (JSON, `kind: Status` on errors, chunked watch
streams with one JSON event per line). It also applies injected faults and logs each request.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import yaml
from aiohttp import web

from testbed.apiserver import discovery, errors, routing
from testbed.apiserver.deletion import DeleteOptions
from testbed.apiserver.faults import Faults
from testbed.apiserver.listing import ListOptions
from testbed.apiserver.requestlog import RequestLog, RequestRecord
from testbed.apiserver.routing import RequestInfo
from testbed.apiserver.store import Store
from testbed.apiserver.watch import dumps

BODY_TYPES = ("application/json", "application/yaml")
"""Protobuf bodies are refused with 415, as a server that lacks protobuf for a type does."""
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}
USER = web.RequestKey("user", str)
"""Who sent the request, when the server authenticates (for the request log)."""
RECORDED = web.RequestKey("recorded", bool)
MIN_REQUEST_TIMEOUT = 1800.0
"""kube-apiserver's `--min-request-timeout`: a watch without timeoutSeconds ends after 1-2x this."""


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    payload = body if isinstance(body, bytes) else dumps(body)
    return web.Response(status=status, body=payload, content_type="application/json", headers=headers)


def error_response(error: errors.ApiError) -> web.Response:
    return json_response(error.code, error.status, headers=error.headers or None)


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    if request.content_type == "application/vnd.kubernetes.protobuf":
        accepted = ", ".join(BODY_TYPES)
        raise errors.UnsupportedMediaType(
            f"the body of the request was in an unknown format - accepted media types include: {accepted}"
        )
    try:
        if request.content_type in ("application/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.BadRequest(f"couldn't get version/kind; json parse error: {exc}") from None


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("true", "1")


def _int(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.BadRequest(f"invalid value for {name}: {value!r}") from None


class ApiHandler:
    """Serves `/api`, `/apis`, `/version`, `/openapi/v3` and the health checks of one server."""

    def __init__(self, store: Store, faults: Faults, log: RequestLog, *, server_address: Callable[[], str]):
        self.store = store
        self.faults = faults
        self.log = log
        self._server_address = server_address

    async def handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        info = RequestInfo(request.method.lower(), request.path)
        code = 500
        try:
            response: web.StreamResponse | None = await self._non_resource(request)
            if response is None:
                info = routing.parse(request.method, request.path, request.query, self.store.registry)
                response = await self._serve(request, info)
            code = response.status
            return response
        except errors.ApiError as exc:
            code = exc.code
            return error_response(exc)
        finally:
            if not request.get(RECORDED) and not request.path.startswith(("/healthz", "/livez", "/readyz")):
                self._record(request, info, code, loop.time() - started)

    def _record(self, request: web.Request, info: RequestInfo, code: int, duration: float) -> None:
        record = RequestRecord(
            time=self.store.clock(),
            verb=info.verb,
            group=info.group,
            resource=info.resource,
            subresource=info.subresource,
            namespace=info.namespace,
            name=info.name,
            code=code,
            user_agent=request.headers.get("User-Agent", ""),
            user=request.get(USER, ""),
            path=request.path_qs,
            duration=duration,
        )
        self.log.record(record)

    async def _non_resource(self, request: web.Request) -> web.Response | None:
        path = request.path.rstrip("/") or "/"
        registry = self.store.registry
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return json_response(200, discovery.VERSION)
        if path == "/api":
            return json_response(200, discovery.api_versions(self._server_address()))
        if path == "/apis":
            return json_response(200, discovery.api_group_list(registry))
        if path == "/openapi/v3":
            return json_response(200, discovery.openapi_v3_root(registry))
        if path.startswith("/openapi/v3/"):
            parts = path[len("/openapi/v3/") :].split("/")
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[-1])
            document = discovery.openapi_v3_document(registry, group, version) if len(parts) >= 2 else None
            if document is None:
                raise errors.resource_not_found()
            return json_response(200, document)
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"] and len(parts) == 2:
            return json_response(200, discovery.resource_list(registry, "", "v1"))
        if parts[:1] == ["apis"] and len(parts) in (2, 3):
            found = (
                discovery.api_group(registry, parts[1])
                if len(parts) == 2
                else discovery.resource_list(registry, parts[1], parts[2])
            )
            if found is None:
                raise errors.resource_not_found()
            return json_response(200, found)
        return None

    async def _serve(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        delay = self.faults.latency(info)
        if delay > 0:
            await asyncio.sleep(delay)
        if injected := self.faults.take_failure(info):
            raise injected
        assert info.rtype is not None
        rtype, query = info.rtype, request.query
        dry_run = query.get("dryRun") == "All"
        match info.verb:
            case "get":
                return json_response(
                    200, await self.store.get(rtype.key, info.name, namespace=info.namespace)
                )
            case "list":
                return self._list(info, query)
            case "watch":
                return await self._watch(request, info)
            case "create":
                body = await read_body(request)
                created = await self.store.create(rtype.key, body, namespace=info.namespace, dry_run=dry_run)
                return json_response(201, created)
            case "update":
                body = await read_body(request)
                name = ((body or {}).get("metadata") or {}).get("name") if isinstance(body, dict) else None
                if name != info.name:
                    raise errors.BadRequest(
                        f"the name of the object ({name or ''}) does not match the name on the URL "
                        f"({info.name})"
                    )
                return json_response(
                    200,
                    await self.store.update(
                        rtype.key,
                        body,
                        namespace=info.namespace,
                        subresource=info.subresource,
                        dry_run=dry_run,
                    ),
                )
            case "patch":
                return json_response(200, await self._patch(request, info, dry_run=dry_run))
            case "delete":
                body = await read_body(request)
                grace = _int(query, "gracePeriodSeconds")
                options = DeleteOptions.from_body(body, grace_period_seconds=grace, dry_run=dry_run)
                deleted = await self.store.delete(
                    rtype.key, info.name, namespace=info.namespace, options=options
                )
                return json_response(200, deleted)
            case "deletecollection":
                listed = await self.store.delete_collection(
                    rtype.key,
                    namespace=info.namespace,
                    label_selector=query.get("labelSelector", ""),
                    field_selector=query.get("fieldSelector", ""),
                )
                return json_response(200, listed)
        raise errors.method_not_allowed()

    async def _patch(self, request: web.Request, info: RequestInfo, *, dry_run: bool) -> dict[str, Any]:
        assert info.rtype is not None
        patch_type = PATCH_TYPES.get(request.content_type)
        if patch_type is None:
            raise errors.UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(PATCH_TYPES)}"
            )
        body = await read_body(request)
        return await self.store.patch(
            info.rtype.key,
            info.name,
            body,
            patch_type=patch_type,
            namespace=info.namespace,
            subresource=info.subresource,
            dry_run=dry_run,
        )

    def _list(self, info: RequestInfo, query: Any) -> web.Response:
        assert info.rtype is not None
        rtype = info.rtype
        options = ListOptions(
            label_selector=query.get("labelSelector", ""),
            field_selector=query.get("fieldSelector", ""),
            limit=_int(query, "limit") or 0,
            continue_token=query.get("continue", ""),
            resource_version=query.get("resourceVersion", ""),
            resource_version_match=query.get("resourceVersionMatch", ""),
        )
        entries, meta = self.store.list_entries(rtype, options, namespace=info.namespace)
        head = dumps({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta})
        body = head[:-1] + b',"items":[' + b",".join(e.item_json() for e in entries) + b"]}"
        return json_response(200, body)

    async def _watch(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        assert info.rtype is not None
        query = request.query
        requested = query.get("resourceVersion", "")
        timeout = _int(query, "timeoutSeconds")
        seconds = float(timeout) if timeout else MIN_REQUEST_TIMEOUT * (1 + random.random())
        if self.faults.take_watch_expiry():
            expired = errors.too_old_resource_version(int(requested or 0), self.store.resource_version)
            return await self._stream(request, [dumps({"type": "ERROR", "object": expired.status}) + b"\n"])
        try:
            watch = self.store.watch(
                info.rtype.key,
                requested,
                namespace=info.namespace,
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                allow_bookmarks=_flag(query, "allowWatchBookmarks"),
                send_initial_events=_flag(query, "sendInitialEvents") or None,
            )
        except errors.Expired as exc:
            return await self._stream(request, [dumps({"type": "ERROR", "object": exc.status}) + b"\n"])
        deadline = asyncio.get_running_loop().time() + seconds
        response = await self._stream(request, [], eof=False)
        self._record(request, info, 200, 0.0)  # counted when it starts, not when it ends
        request[RECORDED] = True
        try:
            while (chunk := await watch.next_lines(deadline)) is not None:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            watch.close()
        return response

    async def _stream(
        self, request: web.Request, lines: list[bytes], *, eof: bool = True
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        if eof:
            await response.write_eof()
        return response
