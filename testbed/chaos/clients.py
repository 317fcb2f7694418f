"""The soak's own connections: a kubectl-like API client that retries, and the test bed's control endpoints.

The soak plays the user (creating claims and pods) and the referee (reading objects, injecting faults),
so its requests meet the faults too: `Api.call` retries what a user would simply run again — no answer
(the API server is restarting), 5xx, 429, a conflict — for a bounded time, and treats "already exists"
after a lost answer to a create, and "not found" after a lost answer to a delete, as done.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from common.backoff import TokenBucket
from common.kube.client import ApiError, KubeClient
from common.kube.config import load_cluster_config
from common.kube.resources import Resource

T = TypeVar("T")
Obj = dict[str, Any]
USER_AGENT = "chaos-soak"
RETRY_FOR = 20.0
"""Seconds a user request is retried before it counts as failed."""


def _transient(err: ApiError) -> bool:
    return err.status in (0, 409, 429, 500, 502, 503, 504) and not err.already_exists


class Api:
    """The soak's API client (user agent `chaos-soak`)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.retries = 0
        """Requests that were sent again after a transient error."""

    @classmethod
    async def connect(cls, kubeconfig: str) -> Api:
        config = await load_cluster_config(kubeconfig=kubeconfig)
        return cls(KubeClient(config, limiter=TokenBucket(math.inf, 1), user_agent=USER_AGENT))

    async def close(self) -> None:
        await self.kube.close()

    async def call(self, request: Callable[[], Awaitable[T]], *, retry_for: float = RETRY_FOR) -> T:
        """`request()`, again after transient errors for up to `retry_for` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        delay = 0.1
        while True:
            try:
                return await request()
            except ApiError as err:
                if not _transient(err) or loop.time() + delay > deadline:
                    raise
            except (aiohttp.ClientError, OSError, TimeoutError):
                if loop.time() + delay > deadline:
                    raise
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def create(self, resource: Resource, obj: Obj) -> bool:
        """Create `obj`; False when it already existed (e.g. our earlier answer was lost)."""
        try:
            await self.call(lambda: self.kube.create(resource, obj))
        except ApiError as err:
            if err.already_exists:
                return False
            raise
        return True

    async def delete(self, resource: Resource, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was not there."""
        try:
            await self.call(lambda: self.kube.delete(resource, name, namespace=namespace))
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return True

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.call(lambda: self.kube.get(resource, name, namespace=namespace))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def items(self, resource: Resource, namespace: str | None = None) -> list[Obj]:
        listed = await self.call(lambda: self.kube.list(resource, namespace=namespace))
        found: list[Obj] = listed.get("items") or []
        return found

    async def patch(self, resource: Resource, name: str, body: Obj, namespace: str | None = None) -> Obj:
        return await self.call(lambda: self.kube.patch(resource, name, body, namespace=namespace))


class Control:
    """JSON over HTTP to the test bed: the API server's `/testbed/...` and the driver's control endpoint."""

    def __init__(self, apiserver_url: str, driver_url: str) -> None:
        self.apiserver = apiserver_url.rstrip("/") + "/testbed"
        self.driver = driver_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _json(self, method: str, url: str, body: Obj | None, retry_for: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        while True:
            try:
                async with self.session.request(method, url, json=body) as answer:
                    if answer.status >= 500:
                        raise aiohttp.ClientResponseError(
                            answer.request_info, (), status=answer.status, message=await answer.text()
                        )
                    return await answer.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError):
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def apiserver_call(
        self, method: str, path: str, body: Obj | None = None, *, retry_for: float = 10.0
    ) -> Any:
        """`/testbed/<path>` (retried while the API server restarts)."""
        return await self._json(method, f"{self.apiserver}/{path}", body, retry_for)

    async def driver_call(
        self, method: str, path: str, body: Obj | None = None, *, retry_for: float = 10.0
    ) -> Any:
        """The driver's control endpoint `/<path>`."""
        return await self._json(method, f"{self.driver}/{path}", body, retry_for)
