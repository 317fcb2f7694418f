"""Golden replay: the 47 requests captured from a real kube-apiserver v1.36.2, answered by the test bed.

The cases are replayed in order against one server, over raw HTTP (the exact paths, content types and
bodies of the capture). Between cases the test does what kube-controller-manager's volume controllers
did on the real cluster (the PV controller annotating claims, the pvc-protection controller removing its
finalizer, the PV controller making a PV Available), so that every answer can be compared whole.
Compared: status codes, Status bodies, objects and watch lines — ignoring uid, resourceVersion values,
timestamps, generateName suffixes and managedFields, as tests/golden/apiserver/README.md allows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testbed.apiserver import ApiServer, Store

GOLDEN = json.loads((Path(__file__).parents[1] / "golden/apiserver/kube-apiserver-1.36.json").read_text())
CASES: list[dict[str, Any]] = GOLDEN["cases"]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PROVISIONER_ANNOTATIONS = {
    "volume.beta.kubernetes.io/storage-provisioner": "hostpath.csi.k8s.io",
    "volume.kubernetes.io/storage-provisioner": "hostpath.csi.k8s.io",
}


async def annotate_claim(store: Store, name: str) -> None:
    """The PV controller marks a claim of a CSI storage class for the external provisioner."""
    patch = {"metadata": {"annotations": PROVISIONER_ANNOTATIONS}}
    await store.patch("persistentvolumeclaims", name, patch, namespace="golden")


async def release_pvc_protection(store: Store) -> None:
    """The pvc-protection controller lets go of a deleted claim no pod uses."""
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["kubernetes.io/pvc-protection"]}}
    await store.patch("persistentvolumeclaims", "data", patch, namespace="golden")


async def make_available(store: Store) -> None:
    """The PV controller finds no claim for a new PV and makes it Available."""
    pv = await store.get("persistentvolumes", "pv-golden")
    pv["status"]["phase"] = "Available"
    await store.update_status("persistentvolumes", pv)


CONTROLLERS: dict[int, Callable[[Store], Awaitable[None]]] = {
    9: lambda store: annotate_claim(store, "data"),
    11: lambda store: annotate_claim(store, CREATED["generated"]),
    30: release_pvc_protection,
    37: make_available,
}
CREATED: dict[str, str] = {}


def scrub(value: Any) -> Any:
    """Replace what may differ between runs (README of the golden file) with placeholders."""
    if isinstance(value, dict):
        out = {k: scrub(v) for k, v in value.items() if k != "managedFields"}
        for key in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "lastPhaseTransitionTime",
        ):
            if key in out and out[key] is not None:
                out[key] = f"<{key}>"
        if "generateName" in out and str(out.get("name", "")).startswith(out["generateName"]):
            out["name"] = out["generateName"] + "<random>"
        if isinstance(value.get("continue"), str) and value["continue"]:
            token = json.loads(base64.urlsafe_b64decode(value["continue"] + "=="))
            out["continue"] = {**token, "rv": "<rv>"}
        if "serverAddress" in out:
            out["serverAddress"] = "<address>"
        return out
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return UUID.sub("<uid>", value)
    return value


def map_resource_versions(golden: Any, actual: Any, mapping: dict[str, str]) -> None:
    """Learn which of our resourceVersions stands for which golden one (for later requests quoting them)."""
    if isinstance(golden, dict) and isinstance(actual, dict):
        if isinstance(golden.get("resourceVersion"), str) and isinstance(actual.get("resourceVersion"), str):
            mapping.setdefault(golden["resourceVersion"], actual["resourceVersion"])
        for key in golden.keys() & actual.keys():
            map_resource_versions(golden[key], actual[key], mapping)
    elif isinstance(golden, list) and isinstance(actual, list):
        for g, a in zip(golden, actual, strict=False):
            map_resource_versions(g, a, mapping)


def rewrite(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (mapping.get(v, v) if k == "resourceVersion" else rewrite(v, mapping))
            for k, v in value.items()
        }
    return value


async def read_watch(http: aiohttp.ClientSession, path: str, count: int) -> tuple[int, list[Any]]:
    async with http.get(path) as response:
        lines: list[Any] = []
        async with asyncio.timeout(5):
            while len(lines) < count:
                lines.append(json.loads(await response.content.readline()))
        try:
            async with asyncio.timeout(0.3):
                extra = await response.content.readline()
        except TimeoutError:
            extra = b""
        if extra:
            lines.append(json.loads(extra))
        return response.status, lines


async def replay() -> list[tuple[int, Any]]:
    """Send every golden request in order; return (status, body or watch lines) for each."""
    results: list[tuple[int, Any]] = []
    mapping: dict[str, str] = {}
    async with (
        ApiServer(bookmark_interval=3600) as server,
        aiohttp.ClientSession(base_url=server.url) as http,
    ):
        for index, case in enumerate(CASES):
            request, expected = case["request"], case["response"]
            path = re.sub(
                r"resourceVersion=(\d+)",
                lambda m: f"resourceVersion={mapping.get(m[1], m[1])}",
                request["path"],
            )
            if "stream_lines" in expected:
                results.append(await read_watch(http, path, len(expected["stream_lines"])))
                continue
            headers = {"Content-Type": request["content_type"]} if request.get("content_type") else {}
            body = request.get("body")
            data = json.dumps(rewrite(body, mapping)) if body is not None else None
            async with http.request(request["method"], path, data=data, headers=headers) as response:
                answer = await response.json(content_type=None)
                results.append((response.status, answer))
            map_resource_versions(expected.get("body"), answer, mapping)
            if index == 11:
                CREATED["generated"] = answer["metadata"]["name"]
            if index in CONTROLLERS:
                await CONTROLLERS[index](server.store)
    return results


@pytest.fixture(scope="module")
def replayed() -> list[tuple[int, Any]]:
    return asyncio.run(replay())


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


def check_discovery(index: int, expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """We serve a subset of the real server's APIs: what we list must be listed exactly as it lists it."""
    if expected.get("kind") == "APIGroupList":
        ours, theirs = _by_name(actual["groups"]), _by_name(expected["groups"])
        assert [g for g in actual["groups"] if g["name"] in theirs] == [
            g for g in expected["groups"] if g["name"] in ours
        ]
        assert set(ours) - set(theirs) == {"snapshot.storage.k8s.io"}  # a CRD group, not in the capture
        assert {"apps", "events.k8s.io", "storage.k8s.io", "coordination.k8s.io"} <= set(ours)
    elif index == 3:
        ours, theirs = _by_name(actual["resources"]), _by_name(expected["resources"])
        for name, entry in ours.items():
            assert entry == theirs[name], name
        needed = (
            "persistentvolumeclaims persistentvolumeclaims/status persistentvolumes persistentvolumes/status"
        )
        needed += (
            " pods pods/status nodes nodes/status namespaces namespaces/status secrets events configmaps"
        )
        assert set(needed.split()) <= set(ours)
        assert actual["kind"] == expected["kind"] and actual.keys() == expected.keys()
    else:
        assert scrub(actual) == scrub(expected)


@pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[f"{i:02d}-{c['name']}" for i, c in enumerate(CASES)]
)
def test_golden_case(replayed: list[tuple[int, Any]], index: int) -> None:
    expected = CASES[index]["response"]
    status, actual = replayed[index]
    if "stream_lines" in expected:
        assert status == 200
        assert scrub(actual) == scrub(expected["stream_lines"])
        return
    assert status == expected["status"]
    if index in (2, 3):
        check_discovery(index, expected["body"], actual)
    else:
        assert scrub(actual) == scrub(expected["body"])


def test_every_golden_case_is_replayed() -> None:
    assert len(CASES) == 47
