"""Each invariant holds on a consistent cluster and catches the failure it is about (no vacuous checks)."""

from __future__ import annotations

import copy
from typing import Any

from testbed.chaos import invariants as inv
from testbed.chaos.churn import ClaimRecord
from testbed.chaos.fleet import Exit
from testbed.chaos.observe import LeaseTracker, Snapshot, micro_time
from testbed.controllers.storage import attachment_name
from testbed.launch import DRIVER_NAME

Obj = dict[str, Any]
NOW = 1_700_000_000.0


def cluster() -> Snapshot:
    """One claim Bound to a PV whose volume is attached and published for a running pod."""
    claim = {
        "metadata": {"name": "c-1", "namespace": "default", "uid": "u1"},
        "spec": {"volumeName": "pv-1", "resources": {"requests": {"storage": "96Mi"}}},
        "status": {"phase": "Bound", "capacity": {"storage": "96Mi"}},
    }
    pv = {
        "metadata": {"name": "pv-1", "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"]},
        "spec": {"capacity": {"storage": "96Mi"}, "csi": {"driver": DRIVER_NAME, "volumeHandle": "vol-1"}},
    }
    va_name = attachment_name("vol-1", DRIVER_NAME, "node-1")
    va = {
        "metadata": {"name": va_name, "finalizers": ["external-attacher/hostpath-csi-k8s-io"]},
        "spec": {"nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}},
        "status": {"attached": True},
    }
    pod = {
        "metadata": {"name": "c-1-pod-1", "namespace": "default"},
        "spec": {
            "nodeName": "node-1",
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c-1"}}],
        },
        "status": {"phase": "Running"},
    }
    volume = {"volume_id": "vol-1", "name": "pvc-u1", "published_node_ids": ["node-1"]}
    lease = {"spec": {"holderIdentity": "csi-provisioner-0", "renewTime": "2023-11-14T22:13:20.000000Z"}}
    return Snapshot(
        at=NOW,
        claims={"c-1": claim},
        volumes={"pv-1": pv},
        attachments={va_name: va},
        pods={"c-1-pod-1": pod},
        leases={"provisioner": lease},
        driver={"volumes": [volume]},
        apiserver={},
    )


def record(requested: int = 96) -> ClaimRecord:
    return ClaimRecord("c-1", "Immediate", requested, resizes=1)


def test_a_consistent_cluster_holds_everything() -> None:
    snap = cluster()
    for verdict in (
        inv.claims_bound(snap),
        inv.volumes_accounted(snap),
        inv.nothing_stuck(snap),
        inv.attachments_match(snap),
        inv.capacity_matches(snap, [record()]),
        inv.no_crash_loop([Exit("csi-provisioner-0", -9, NOW, expected=True, signal="SIGKILL")], {"x": 1}),
        inv.leases_live(snap, {"provisioner": 0.0}, {"csi-provisioner-0": True}),
    ):
        assert verdict.held, verdict
        assert verdict.figure


def test_a_pending_claim_or_a_missing_volume_is_caught() -> None:
    snap = cluster()
    snap.claims["c-1"]["status"]["phase"] = "Pending"
    assert not inv.claims_bound(snap).held
    snap = cluster()
    snap.driver["volumes"] = []
    verdict = inv.claims_bound(snap)
    assert not verdict.held and "not in the driver" in verdict.problems[0]


def test_leaked_and_duplicated_volumes_are_caught() -> None:
    snap = cluster()
    snap.driver["volumes"].append({"volume_id": "vol-2", "name": "pvc-u2"})
    verdict = inv.volumes_accounted(snap)
    assert not verdict.held and "1 leaked" in verdict.figure
    snap = cluster()
    snap.volumes["pv-2"] = copy.deepcopy(snap.volumes["pv-1"]) | {"metadata": {"name": "pv-2"}}
    verdict = inv.volumes_accounted(snap)
    assert not verdict.held and "1 duplicated" in verdict.figure


def test_a_deleted_object_kept_by_our_finalizer_is_caught_but_not_by_others() -> None:
    snap = cluster()
    snap.volumes["pv-1"]["metadata"]["deletionTimestamp"] = "2023-11-14T22:13:20Z"
    verdict = inv.nothing_stuck(snap)
    assert not verdict.held and "PV pv-1" in verdict.problems[0]
    snap = cluster()
    meta = snap.claims["c-1"]["metadata"]
    meta |= {"deletionTimestamp": "2023-11-14T22:13:20Z", "finalizers": ["kubernetes.io/pvc-protection"]}
    assert inv.nothing_stuck(snap).held


def test_an_unattached_volume_of_a_running_pod_and_a_publication_without_va_are_caught() -> None:
    snap = cluster()
    next(iter(snap.attachments.values()))["status"]["attached"] = False
    assert not inv.attachments_match(snap).held
    snap = cluster()
    snap.attachments.clear()
    snap.pods.clear()
    verdict = inv.attachments_match(snap)
    assert not verdict.held and "without a VolumeAttachment" in verdict.problems[0]


def test_capacity_other_than_the_last_request_is_caught() -> None:
    snap = cluster()
    verdict = inv.capacity_matches(snap, [record(requested=128)])
    assert not verdict.held and "last request 128Mi" in verdict.problems[0]


def test_node_expansion_waiting_for_the_next_mount_is_not_a_violation() -> None:
    snap = cluster()
    snap.pods.clear()
    snap.volumes["pv-1"]["spec"]["capacity"]["storage"] = "128Mi"
    verdict = inv.capacity_matches(snap, [record(requested=128)])
    assert verdict.held and "1 await" in verdict.figure
    snap.pods.update(cluster().pods)  # mounted: kubelet should have finished it
    assert not inv.capacity_matches(snap, [record(requested=128)]).held


def test_an_exit_on_its_own_or_a_failed_sigterm_is_a_crash_loop() -> None:
    crashed = Exit("csi-attacher-1", 1, NOW, expected=False, last_lines="E lost lease")
    verdict = inv.no_crash_loop([crashed], {"csi-attacher-1": 1})
    assert not verdict.held and "exited on its own" in verdict.problems[0]
    stuck = Exit("csi-resizer-0", -9, NOW, expected=True, signal="SIGTERM")
    assert not inv.no_crash_loop([stuck], {}).held


def test_a_lease_held_by_a_dead_identity_is_caught() -> None:
    snap = cluster()
    assert not inv.leases_live(snap, {"provisioner": 0.0}, {"csi-provisioner-0": False}).held
    assert not inv.leases_live(snap, {"provisioner": inv.LEASE_SLACK + 0.5}, {"csi-provisioner-0": True}).held


class _Fleet:
    def __init__(self, alive: bool) -> None:
        self._alive = alive

    def alive(self, name: str) -> bool:
        return self._alive


def test_the_lease_tracker_measures_how_long_a_dead_holder_kept_an_expired_lease() -> None:
    snap = cluster()
    lease = snap.leases["provisioner"]
    assert lease is not None
    lease["spec"] |= {"leaseDurationSeconds": 4}
    renewed = micro_time(lease["spec"]["renewTime"])
    assert renewed is not None
    snap.at = renewed + 7.5
    tracker = LeaseTracker(_Fleet(alive=False))  # type: ignore[arg-type]
    tracker.observe(snap)
    assert tracker.worst["provisioner"] == 3.5
    alive = LeaseTracker(_Fleet(alive=True))  # type: ignore[arg-type]
    alive.observe(snap)
    assert alive.worst["provisioner"] == 0.0
