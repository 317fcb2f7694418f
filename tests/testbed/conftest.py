"""Fixtures for the test bed's own tests: an in-process API server and clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from testbed.apiserver import ApiServer


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    """A fresh test-bed API server over plain HTTP (bookmarks every 0.2 s, to keep tests fast)."""
    async with ApiServer(bookmark_interval=0.2) as server:
        yield server


async def kube_client(server: ApiServer) -> client.ApiClient:
    """A kubernetes-asyncio client configured from the server's kubeconfig, as a real program would be."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture
def kube_client_for() -> Callable[[ApiServer], Awaitable[client.ApiClient]]:
    """`await kube_client_for(server)`: a client of another server than the `apiserver` fixture (close it)."""
    return kube_client


@pytest.fixture
async def kube(apiserver: ApiServer) -> AsyncIterator[client.ApiClient]:
    api = await kube_client(apiserver)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def http(apiserver: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP session on the server's URL, for what typed clients hide (status bodies, watch lines)."""
    async with aiohttp.ClientSession(base_url=apiserver.url) as session:
        yield session
