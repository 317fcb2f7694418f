"""The Kubernetes API client: JSON over HTTP(S), rate limited, objects as plain dicts.

One `KubeClient` per API identity. Every request first takes a token from the client's limiter
(`--kube-api-qps`/`--kube-api-burst`); `sibling()` gives a client on the same connection pool with a
limiter of its own, which is how leader election and the provisioner's capacity controller get
their own budgets, as upstream builds separate clientsets for them.

A 429 (or 5xx) answer with `Retry-After` pauses the limiter for that long and the request is
retried, up to 10 times, as client-go's `checkWait` does. Any other error answer raises `ApiError`
carrying the server's `Status`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, Protocol

import aiohttp

from common.kube.config import ClusterConfig
from common.kube.resources import Resource
from common.logging import get_logger

log = get_logger(__name__)

PatchType = Literal["merge", "strategic", "json"]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}
MAX_RETRY_AFTER_RETRIES = 10
REQUEST_TIMEOUT = 60.0


class Limiter(Protocol):
    """What the client needs of a token bucket (common.backoff.TokenBucket is one)."""

    async def acquire(self) -> None: ...

    def pause(self, seconds: float) -> None: ...


class ApiError(Exception):
    """An error answer from the API server, or no answer at all (`status == 0`)."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.body: Mapping[str, Any] = body or {}

    @classmethod
    def from_status(cls, status: int, body: Mapping[str, Any]) -> ApiError:
        return cls(
            int(body.get("code", status) or status),
            str(body.get("reason", "")),
            str(body.get("message", "")),
            body,
        )

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def invalid(self) -> bool:
        return self.status == 422

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    def __str__(self) -> str:
        return self.message or f"{self.status} {self.reason}"


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    if response.status != 429 and response.status < 500:
        return None
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class KubeClient:
    """Requests to one API server with one rate limiter (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        limiter: Limiter | None,
        user_agent: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.user_agent = user_agent
        self._session = session
        self._owns_session = session is None

    def sibling(self, *, limiter: Limiter | None) -> KubeClient:
        """A client on the same connection pool with its own rate limiter."""
        return KubeClient(self.config, limiter=limiter, user_agent=self.user_agent, session=self._open())

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=100, ssl=self.config.ssl_context or False)
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**21)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        headers.update(await self.config.auth_headers())
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        if data is not None and content_type is None:
            content_type = "application/json"
        session = self._open()
        for attempt in range(MAX_RETRY_AFTER_RETRIES + 1):
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                response = await session.request(
                    method,
                    self.config.host + path,
                    params=query,
                    data=data,
                    headers=await self._headers(content_type),
                    timeout=client_timeout,
                    server_hostname=self.config.tls_server_name,
                )
            except (aiohttp.ClientError, OSError) as exc:
                raise ApiError(0, "ConnectionError", f"{method} {path}: {exc}") from exc
            delay = _retry_after(response)
            if delay is None or attempt == MAX_RETRY_AFTER_RETRIES:
                return response
            response.release()
            log.info("API server asked to retry later", method=method, path=path, seconds=delay, v=2)
            if self.limiter is not None:
                self.limiter.pause(delay)
            else:
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        """One request; returns the decoded JSON answer or raises `ApiError`."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        response = await self._send(
            method, path, query=query, body=body, content_type=content_type, client_timeout=timeout
        )
        async with response:
            try:
                raw = await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ApiError(0, "ConnectionError", f"{method} {path}: {exc}") from exc
        payload = json.loads(raw) if raw else {}
        if response.status >= 400:
            if isinstance(payload, dict) and payload.get("kind") == "Status":
                raise ApiError.from_status(response.status, payload)
            raise ApiError(response.status, response.reason or "", raw.decode(errors="replace")[:200])
        return payload

    async def watch(
        self, path: str, *, query: Mapping[str, str], inactivity_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream watch events (`{"type", "object"}`). An ERROR event is raised as `ApiError`."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=inactivity_timeout)
        response = await self._send(
            "GET",
            path,
            query={**query, "watch": "true"},
            body=None,
            content_type=None,
            client_timeout=timeout,
        )
        async with response:
            if response.status >= 400:
                payload = json.loads(await response.read() or b"{}")
                raise ApiError.from_status(response.status, payload)
            buffer = b""
            try:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while (newline := buffer.find(b"\n")) >= 0:
                        line, buffer = buffer[:newline], buffer[newline + 1 :]
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            raise ApiError.from_status(500, event.get("object") or {})
                        yield event
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ApiError(0, "ConnectionError", f"watch {path}: {exc!r}") from exc

    # Typed conveniences over `request`.

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", resource.path(namespace=namespace, name=name))
        return result

    async def serves(self, resource: Resource) -> bool:
        """Discovery: does the API server serve `resource` (its group/version lists the plural)?

        A failed discovery request counts as "not served" (logged at --v=2), as upstream's checks do."""
        try:
            found = await self.request("GET", resource.path().removesuffix(f"/{resource.plural}"))
        except ApiError as exc:
            log.info("API discovery failed", group_version=resource.api_version, error=str(exc), v=2)
            return False
        return any(r.get("name") == resource.plural for r in found.get("resources") or ())

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if limit:
            query["limit"] = str(limit)
        if continue_token:
            query["continue"] = continue_token
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        result: dict[str, Any] = await self.request("GET", resource.path(namespace=namespace), query=query)
        return result

    async def create(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace")
        result: dict[str, Any] = await self.request("POST", resource.path(namespace=namespace), body=obj)
        return result

    async def update(
        self, resource: Resource, obj: dict[str, Any], *, subresource: str = ""
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource.path(namespace=meta.get("namespace"), name=meta["name"], subresource=subresource)
        result: dict[str, Any] = await self.request("PUT", path, body=obj)
        return result

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str = "",
    ) -> dict[str, Any]:
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        result: dict[str, Any] = await self.request(
            "PATCH", path, body=patch, content_type=PATCH_CONTENT_TYPES[patch_type]
        )
        return result

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        body = (
            {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": dict(preconditions)}
            if (preconditions)
            else None
        )
        result: dict[str, Any] = await self.request(
            "DELETE", resource.path(namespace=namespace, name=name), body=body
        )
        return result
