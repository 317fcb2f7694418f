"""csi-resizer's in-use tracking (slim pods, the claims index) and its slow set."""

from __future__ import annotations

import sys
from typing import Any, cast

from common.kube.client import KubeClient
from common.kube.informer import Informer
from common.kube.resources import PODS
from sidecars.resizer.inuse import CLAIMS_INDEX, InUseTracker, claims_index, slim_pod
from sidecars.resizer.slowset import SlowSet


def full_pod(name: str, *claims: str, phase: str = "Running", namespace: str = "apps") -> dict[str, Any]:
    """A Pod as the API server returns it, with the bulk a real one carries."""
    volumes: list[dict[str, Any]] = [
        {"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)
    ]
    volumes += [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "42",
            "labels": {"app": "web", "pod-template-hash": "abc"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {
            "nodeName": "node-1",
            "volumes": volumes,
            "containers": [{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "b"}] * 10}],
        },
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"},
    }


def test_slim_pod_keeps_only_what_the_decision_needs() -> None:
    slim = slim_pod(full_pod("web-1", "data", "logs"))
    assert slim == {
        "metadata": {"name": "web-1", "namespace": "apps", "resourceVersion": "42"},
        "claims": ("data", "logs"),
        "node": "node-1",
        "phase": "Running",
    }
    # Repeated values are shared, not copied per pod.
    other = slim_pod(full_pod("web-2", "data"))
    assert other["metadata"]["namespace"] is slim["metadata"]["namespace"]
    assert other["node"] is slim["node"] is sys.intern("node-1")
    assert slim_pod({"metadata": {"name": "bare", "namespace": "x"}}) == {
        "metadata": {"name": "bare", "namespace": "x", "resourceVersion": ""},
        "claims": (),
        "node": "",
        "phase": "",
    }


def test_claims_index_skips_terminated_pods() -> None:
    assert list(claims_index(slim_pod(full_pod("a", "data", "logs")))) == ["apps/data", "apps/logs"]
    assert list(claims_index(slim_pod(full_pod("a", "data", phase="Succeeded")))) == []
    assert list(claims_index(slim_pod(full_pod("a", "data", phase="Failed")))) == []
    assert list(claims_index(slim_pod(full_pod("a", "data", phase="Pending")))) == ["apps/data"]


def test_tracker_follows_the_pod_cache() -> None:
    pods = Informer(cast(KubeClient, None), PODS, transform=slim_pod)
    tracker = InUseTracker(pods)
    assert CLAIMS_INDEX in pods.store._indexes
    assert not tracker.in_use("apps/data")
    pods.store.put(slim_pod(full_pod("web-1", "data")))
    pods.store.put(slim_pod(full_pod("web-2", "data", namespace="other")))
    assert tracker.in_use("apps/data") and tracker.in_use("other/data")
    assert not tracker.in_use("apps/logs")
    pods.store.put(slim_pod(full_pod("web-1", "data", phase="Succeeded")))
    assert not tracker.in_use("apps/data")
    pods.store.put(slim_pod(full_pod("web-1", "data")))
    pods.store.remove("apps/web-1")
    assert not tracker.in_use("apps/data")
    tracker.add_error("uid-pvc")
    assert tracker.has_error("uid-pvc")
    tracker.remove_error("uid-pvc")
    assert not tracker.has_error("uid-pvc")


def test_tracker_without_pod_informer_never_sees_use() -> None:
    tracker = InUseTracker(None)
    assert not tracker.in_use("apps/data")


def test_slow_set_expires_after_the_retry_time() -> None:
    clock = [100.0]
    slow = SlowSet(300.0, now=lambda: clock[0])
    assert not slow.contains("a") and slow.time_remaining("a") == 0.0
    assert slow.add("a")
    clock[0] += 100
    assert slow.contains("a") and slow.time_remaining("a") == 200.0
    assert not slow.add("a")  # the first failure time is kept
    clock[0] += 200
    assert not slow.contains("a")  # expired, and dropped
    assert slow.add("a")
    slow.remove("a")
    assert not slow.contains("a")
