"""The event recorder against the test bed: golden shape, aggregation of repeats, the spam filter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.kube import events as events_module
from common.kube.client import KubeClient
from common.kube.events import NORMAL, WARNING, EventRecorder
from common.kube.resources import EVENTS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES

GOLDEN = Path("/work/shared/upstream-golden/16-events.json")
IGNORED = {"uid", "resourceVersion", "creationTimestamp", "name"}


def pvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


async def all_events(kube: KubeClient, namespace: str = "default") -> list[dict[str, Any]]:
    return list((await kube.list(EVENTS, namespace=namespace))["items"])


def golden_event(reason: str) -> dict[str, Any]:
    path = GOLDEN if GOLDEN.exists() else Path(__file__).parent.parent / "golden" / "16-events.json"
    items = json.loads(path.read_text())["items"]
    return next(e for e in items if e["reason"] == reason)


async def test_event_has_the_shape_client_go_writes(kube: KubeClient) -> None:
    claim = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("data"))
    recorder = EventRecorder(kube, component="hostpath.csi.k8s.io_vm_16529d6d")
    recorder.event(
        claim, NORMAL, "Provisioning", 'External provisioner is provisioning volume for claim "default/data"'
    )
    await recorder.flush()
    (listed,) = await all_events(kube)
    ours = await kube.get(EVENTS, listed["metadata"]["name"], namespace="default")
    golden = golden_event("Provisioning")
    assert set(ours) - {"metadata"} == set(golden) - {"metadata"}
    for field in (
        "apiVersion",
        "kind",
        "count",
        "eventTime",
        "message",
        "reason",
        "reportingInstance",
        "type",
    ):
        assert ours[field] == golden[field], field
    assert set(ours["involvedObject"]) == set(golden["involvedObject"])
    assert ours["involvedObject"]["uid"] == claim["metadata"]["uid"]
    assert ours["source"] == {"component": "hostpath.csi.k8s.io_vm_16529d6d"}
    assert ours["reportingComponent"] == ours["source"]["component"]
    assert ours["metadata"]["name"].startswith("data.")
    assert ours["firstTimestamp"] == ours["lastTimestamp"]


async def test_cluster_scoped_objects_get_events_in_default(kube: KubeClient) -> None:
    volume = await kube.create(
        PERSISTENT_VOLUMES,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "pv-1"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "csi": {"driver": "d", "volumeHandle": "h"},
            },
        },
    )
    recorder = EventRecorder(kube, component="c")
    recorder.event(volume, WARNING, "VolumeFailedDelete", "boom")
    await recorder.flush()
    (event,) = await all_events(kube)
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]


async def test_repeats_bump_the_count_instead_of_new_events(kube: KubeClient) -> None:
    claim = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("rep"))
    recorder = EventRecorder(kube, component="c")
    for _ in range(3):
        recorder.event(claim, WARNING, "ProvisioningFailed", "same error")
        await recorder.flush()
    recorder.event(claim, WARNING, "ProvisioningFailed", "another error")
    await recorder.flush()
    events = sorted(await all_events(kube), key=lambda e: e["message"])
    assert [(e["message"], e["count"]) for e in events] == [("another error", 1), ("same error", 3)]


async def test_spam_filter_limits_a_failing_loop(kube: KubeClient, monkeypatch: Any) -> None:
    monkeypatch.setattr(events_module, "SPAM_BURST", 5)
    claim = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc("spam"))
    recorder = EventRecorder(kube, component="c")
    for i in range(50):
        recorder.event(claim, WARNING, "ProvisioningFailed", f"error {i}")
    await recorder.flush()
    assert len(await all_events(kube)) == 5
    assert recorder.dropped == 45
