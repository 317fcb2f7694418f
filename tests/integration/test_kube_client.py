"""The Kubernetes client against the test bed: errors, Retry-After, QPS limiting, finalizer races."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from common.backoff import TokenBucket
from common.kube import finalizers
from common.kube.client import ApiError, KubeClient
from common.kube.config import load_cluster_config
from common.kube.resources import (
    NAMESPACES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    VOLUME_ATTRIBUTES_CLASSES,
    Resource,
)
from testbed.apiserver import ApiServer


def pvc(name: str, namespace: str = "default") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def pv(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": "hostpath.csi.k8s.io", "volumeHandle": name},
        },
    }


async def test_errors_carry_the_servers_status(kube: KubeClient) -> None:
    created = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("a"))
    assert created["spec"]["volumeMode"] == "Filesystem"
    with pytest.raises(ApiError) as exists:
        await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("a"))
    assert exists.value.already_exists and not exists.value.conflict
    with pytest.raises(ApiError) as missing:
        await kube.get(PERSISTENT_VOLUME_CLAIMS, "nope", namespace="default")
    assert missing.value.not_found and missing.value.reason == "NotFound"
    stale = dict(created, metadata={**created["metadata"], "resourceVersion": "1"})
    with pytest.raises(ApiError) as conflict:
        await kube.update(PERSISTENT_VOLUME_CLAIMS, stale)
    assert conflict.value.conflict
    assert "the object has been modified" in str(conflict.value)


async def test_connection_refused_is_an_api_error_with_status_0(
    apiserver: ApiServer, kube: KubeClient
) -> None:
    await apiserver.stop_http()
    with pytest.raises(ApiError) as refused:
        await kube.get(NAMESPACES, "default")
    assert refused.value.status == 0
    await apiserver.start_http()
    assert (await kube.get(NAMESPACES, "default"))["metadata"]["name"] == "default"


async def test_429_with_retry_after_is_retried_after_the_pause(
    apiserver: ApiServer, kube: KubeClient
) -> None:
    apiserver.faults.fail(2, status=429, retry_after=1, verb="get", resource="namespaces")
    started = time.monotonic()
    namespace = await kube.get(NAMESPACES, "default")
    elapsed = time.monotonic() - started
    assert namespace["metadata"]["name"] == "default"
    assert 1.9 <= elapsed < 4.0, elapsed
    assert apiserver.requests.count(verb="get", resource="namespaces") == 3


async def test_500_without_retry_after_is_an_error(apiserver: ApiServer, kube: KubeClient) -> None:
    apiserver.faults.fail(1, status=500, verb="get", resource="namespaces")
    with pytest.raises(ApiError) as failed:
        await kube.get(NAMESPACES, "default")
    assert failed.value.status == 500


async def test_discovery_tells_which_resources_are_served(kube: KubeClient) -> None:
    """`serves` reads the group/version's resource list; an unknown group (404) is "not served"."""
    assert await kube.serves(VOLUME_ATTRIBUTES_CLASSES)
    assert await kube.serves(PERSISTENT_VOLUMES)  # the core group: /api/v1
    assert not await kube.serves(Resource("storage.k8s.io", "v1", "widgets", "Widget", False))
    assert not await kube.serves(Resource("example.com", "v1", "widgets", "Widget", False))


async def test_qps_limit_holds_at_the_server(apiserver: ApiServer, kubeconfig: str) -> None:
    """qps=5, burst=10: 20 requests take about (20-10)/5 = 2 s, never more than burst+qps*t by then."""
    client = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig), limiter=TokenBucket(5, 10), user_agent="qps-test"
    )
    try:
        apiserver.requests.reset()
        started = time.monotonic()
        await asyncio.gather(*(client.get(NAMESPACES, "default") for _ in range(20)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    times = sorted(r.time for r in apiserver.requests.records() if r.user_agent == "qps-test")
    assert len(times) == 20
    assert 1.8 <= elapsed < 3.0, elapsed
    first = times[0]
    for i, moment in enumerate(times):  # request i may start no earlier than the bucket allows
        allowed = 10 + 5 * (moment - first) + 1
        assert i + 1 <= allowed, (i, moment - first)


async def test_sibling_clients_have_their_own_budget(kubeconfig: str) -> None:
    """Leader election's client is never starved by the controllers' exhausted bucket."""
    busy = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig), limiter=TokenBucket(1, 1), user_agent="busy"
    )
    election = busy.sibling(limiter=TokenBucket(math.inf, 1))
    try:
        await busy.get(NAMESPACES, "default")  # the only token of the busy bucket
        hog = asyncio.gather(*(busy.get(NAMESPACES, "default") for _ in range(5)))
        started = time.monotonic()
        await election.get(NAMESPACES, "default")
        assert time.monotonic() - started < 0.5
        await hog
    finally:
        await busy.close()


async def test_concurrent_finalizer_changes_from_stale_copies_lose_nothing(kube: KubeClient) -> None:
    """external-provisioner#1217: two controllers patching finalizers from stale caches."""
    created = await kube.create(PERSISTENT_VOLUMES, pv("pv-race"))
    stale = dict(created)
    names = [f"example.com/f-{i}" for i in range(6)]
    await asyncio.gather(*(finalizers.add_finalizer(kube, PERSISTENT_VOLUMES, stale, n) for n in names))
    current = await kube.get(PERSISTENT_VOLUMES, "pv-race")
    assert set(names) <= set(current["metadata"]["finalizers"])
    assert "kubernetes.io/pv-protection" in current["metadata"]["finalizers"]
    await asyncio.gather(
        *(finalizers.remove_finalizer(kube, PERSISTENT_VOLUMES, current, n) for n in names[:3])
    )
    current = await kube.get(PERSISTENT_VOLUMES, "pv-race")
    remaining = current["metadata"]["finalizers"]
    assert sorted(remaining) == sorted(["kubernetes.io/pv-protection", *names[3:]])  # adds raced: any order


async def test_finalizer_helpers_are_idempotent(kube: KubeClient) -> None:
    obj = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("f"))
    obj = await finalizers.add_finalizer(kube, PERSISTENT_VOLUME_CLAIMS, obj, "example.com/x")
    again = await finalizers.add_finalizer(kube, PERSISTENT_VOLUME_CLAIMS, obj, "example.com/x")
    assert again["metadata"]["finalizers"].count("example.com/x") == 1
    await kube.delete(PERSISTENT_VOLUME_CLAIMS, "f", namespace="default")
    gone = await finalizers.remove_finalizer(kube, PERSISTENT_VOLUME_CLAIMS, again, "example.com/x")
    assert "example.com/x" not in gone["metadata"].get("finalizers", [])
