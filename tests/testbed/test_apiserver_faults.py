"""Fault injection and the request log, from Python and over `/testbed/...`, and the server as a process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from testbed.apiserver import ApiServer

PVCS = "/api/v1/namespaces/default/persistentvolumeclaims"


def pvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


async def test_failures_hit_only_matching_requests_then_stop(
    apiserver: ApiServer, http: aiohttp.ClientSession
) -> None:
    apiserver.faults.fail(2, status=500, verb="create", resource="persistentvolumeclaims")
    async with http.get(PVCS) as response:
        assert response.status == 200
    for _ in range(2):
        async with http.post(PVCS, json=pvc("a")) as response:
            body = await response.json()
            assert response.status == 500 and body["reason"] == "InternalError"
            assert body["message"] == "Internal error occurred: injected fault"
    async with http.post(PVCS, json=pvc("a")) as response:
        assert response.status == 201


async def test_too_many_requests_tells_when_to_retry(
    apiserver: ApiServer, http: aiohttp.ClientSession
) -> None:
    apiserver.faults.fail(1, status=429, retry_after=3, verb="list")
    async with http.get(PVCS) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "3"
        body = await response.json()
    assert body["reason"] == "TooManyRequests" and body["details"] == {"retryAfterSeconds": 3}
    assert body["message"] == "Too many requests, please try again later."


async def test_injected_conflict_names_the_object(apiserver: ApiServer, http: aiohttp.ClientSession) -> None:
    await apiserver.store.create("persistentvolumeclaims", pvc("a"), namespace="default")
    apiserver.faults.fail(1, status=409, verb="patch", subresource="status")
    patch = {"status": {"phase": "Bound"}}
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(f"{PVCS}/a/status", json=patch, headers=headers) as response:
        body = await response.json()
    assert response.status == 409 and body["details"] == {"name": "a", "kind": "persistentvolumeclaims"}
    async with http.patch(f"{PVCS}/a/status", json=patch, headers=headers) as response:
        assert response.status == 200


async def test_latency_delays_matching_requests(apiserver: ApiServer, http: aiohttp.ClientSession) -> None:
    rule = apiserver.faults.add_latency(0.1, verb="get", count=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(f"{PVCS}/missing") as response:
        assert response.status == 404
    assert loop.time() - started >= 0.1
    assert not apiserver.faults.remove(rule.id), "a counted rule goes away once used up"


async def test_next_watch_expires(apiserver: ApiServer, http: aiohttp.ClientSession) -> None:
    apiserver.faults.expire_next_watches()
    rv = apiserver.store.resource_version
    async with http.get(f"{PVCS}?watch=true&resourceVersion={rv}") as response:
        lines = (await response.read()).splitlines()
    assert response.status == 200 and len(lines) == 1
    event = json.loads(lines[0])
    assert (
        event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    )
    assert event["object"]["message"] == f"too old resource version: {rv} ({rv})"


async def test_request_log_counts_per_verb_resource_and_client(
    apiserver: ApiServer, http: aiohttp.ClientSession
) -> None:
    headers = {"User-Agent": "csi-provisioner/v6"}
    await http.post(PVCS, json=pvc("a"), headers=headers)
    await http.get(f"{PVCS}/a", headers=headers)
    await http.get(f"{PVCS}/a")
    await http.patch(f"{PVCS}/a/status", json={}, headers={"Content-Type": "application/merge-patch+json"})
    log = apiserver.requests
    assert log.count(verb="get", resource="persistentvolumeclaims") == 2
    assert log.count(user_agent="csi-provisioner") == 2
    assert log.count(verb="patch", subresource="status") == 1
    record = log.records()[-1]
    assert (record.verb, record.resource, record.subresource, record.name, record.code) == (
        "patch",
        "persistentvolumeclaims",
        "status",
        "a",
        200,
    )
    async with http.get("/testbed/requests?records=false") as response:
        counters = await response.json()
    assert {
        "verb": "create",
        "group": "",
        "resource": "persistentvolumeclaims",
        "subresource": "",
        "count": 1,
    } in (counters["counters"])
    assert "csi-provisioner/v6" in counters["byUserAgent"] and "requests" not in counters
    async with http.delete("/testbed/requests") as response:
        assert response.status == 200
    assert log.count() == 0


async def test_fault_endpoints_over_http(apiserver: ApiServer, http: aiohttp.ClientSession) -> None:
    async with http.post("/testbed/faults", json={"status": 503, "count": 1, "verb": "list"}) as response:
        assert response.status == 201 and "id" in await response.json()
    async with http.get(PVCS) as response:
        assert response.status == 503 and response.headers["Retry-After"] == "1"
    async with http.post("/testbed/latency", json={"seconds": 0.01, "resource": "nodes"}) as response:
        latency_id = (await response.json())["id"]
    async with http.get("/testbed/state") as response:
        state = await response.json()
    assert state["faults"]["latencies"][0]["id"] == latency_id and state["serving"]
    async with http.delete(f"/testbed/faults/{latency_id}") as response:
        assert (await response.json()) == {"removed": True}
    await http.post("/testbed/faults", json={"status": 500, "verb": "get"})
    async with http.delete("/testbed/faults") as response:
        assert response.status == 200
    assert apiserver.faults.state()["failures"] == []
    async with http.post("/testbed/compact") as response:
        assert (await response.json())["resourceVersion"] == apiserver.store.resource_version
    async with http.post("/testbed/watches/expire", json={"count": 2}) as response:
        assert (await response.json()) == {"expiringWatches": 2}
    async with http.post("/testbed/nonsense") as response:
        assert response.status == 404


async def test_close_watches_and_restart_over_http(apiserver: ApiServer, http: aiohttp.ClientSession) -> None:
    rv = apiserver.store.resource_version
    async with http.get(f"{PVCS}?watch=true&resourceVersion={rv}") as watch:
        assert apiserver.requests.count(verb="watch", resource="persistentvolumeclaims") == 1, (
            "counted when open"
        )
        async with http.post("/testbed/watches/close") as response:
            assert (await response.json()) == {"closed": 1}
        assert await asyncio.wait_for(watch.read(), 2) == b""
    async with http.post("/testbed/restart", json={"downtime": 0.1}) as response:
        assert response.status == 202
    await asyncio.sleep(0.1)
    async with asyncio.timeout(3):
        while True:
            try:
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(f"{apiserver.url}/healthz") as response,
                ):
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)


async def test_the_server_runs_as_a_process(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.apiserver",
        "--port",
        "0",
        "--kubeconfig-out",
        str(kubeconfig),
        "--tls",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert url.startswith("https://127.0.0.1:")
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == url
        token = config["users"][0]["user"]["token"]
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
        context = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            async with session.post(
                f"{url}/testbed/faults", json={"status": 500, "verb": "get"}, ssl=context
            ) as r:
                assert r.status == 201
            async with session.get(f"{url}/api/v1/namespaces/default", ssl=context) as response:
                assert response.status == 500
            async with session.get(f"{url}/api/v1/namespaces/default", ssl=context) as response:
                assert (await response.json())["metadata"]["name"] == "default"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


@pytest.mark.parametrize("code", [500, 503, 504, 400, 403])
async def test_each_injected_code_has_a_status_body(
    apiserver: ApiServer, http: aiohttp.ClientSession, code: int
) -> None:
    apiserver.faults.fail(status=code, verb="list")
    async with http.get(PVCS) as response:
        body = await response.json()
    assert (
        response.status == code == body["code"] and body["kind"] == "Status" and body["status"] == "Failure"
    )
