"""The invariants a soak must end with, each a pure function of what was observed, with its figure.

1. `claims_bound` — every claim that still exists is Bound to a PV whose volume exists in the driver.
2. `volumes_accounted` — every volume in the driver belongs to exactly one PV (none leaked, none
   duplicated), and no PV names a volume the driver does not have.
3. `nothing_stuck` — no PV, PVC or VolumeAttachment has a deletionTimestamp and one of our
   finalizers (external-provisioner, external-attacher, the provisioning intent, cloning protection).
4. `attachments_match` — the VolumeAttachment of every volume of every Running pod exists and is
   attached, and every volume the driver has published to a node has a VolumeAttachment.
5. `capacity_matches` — each claim's capacity equals its last request. A claim whose controller
   expansion finished (its PV has the new size) while no pod mounts it keeps its old
   `status.capacity` until the next mount finishes the file-system resize, as in Kubernetes; it is
   counted as held and shown in the figure.
6. `no_crash_loop` — no sidecar exited on its own: every exit was one the schedule caused, and every
   SIGTERM ended with exit code 0.
7. `leases_live` — no Lease is held by a dead identity past its expiry (renewTime + leaseDuration)
   by more than the retry period plus one second (the time a standby needs to notice and take it);
   measured every second during the run and at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from testbed.chaos.churn import ClaimRecord, capacity_mi
from testbed.chaos.fleet import LEASE_DURATION, RETRY_PERIOD, Exit
from testbed.chaos.observe import Snapshot
from testbed.controllers.storage import attachment_name
from testbed.launch import DRIVER_NAME

Obj = dict[str, Any]
OUR_FINALIZERS = (
    "external-provisioner.volume.kubernetes.io/",
    "external-attacher/",
    "provisioner.storage.kubernetes.io/",
    "csi-sidecars.python/",
)
LEASE_SLACK = RETRY_PERIOD + 1.0
"""Seconds past expiry a dead holder may keep a Lease: a standby retries every retry period."""
SHOWN = 5
"""Problems listed per invariant."""


@dataclass
class Verdict:
    """One invariant's outcome."""

    name: str
    held: bool
    figure: str
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> Obj:
        return {"name": self.name, "held": self.held, "figure": self.figure, "problems": self.problems}


def _verdict(name: str, problems: list[str], figure: str) -> Verdict:
    return Verdict(
        name,
        not problems,
        figure,
        problems[:SHOWN] + ([f"... {len(problems) - SHOWN} more"] if len(problems) > SHOWN else []),
    )


def _handle(pv: Obj) -> str:
    return str(((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle") or "")


def claims_bound(snap: Snapshot) -> Verdict:
    volumes = {v["volume_id"] for v in snap.driver_volumes}
    problems = []
    for name, claim in sorted(snap.claims.items()):
        phase = (claim.get("status") or {}).get("phase")
        pv = snap.volumes.get(str(claim["spec"].get("volumeName") or ""))
        if phase != "Bound" or pv is None:
            deleting = " (deleting)" if claim["metadata"].get("deletionTimestamp") else ""
            problems.append(f"claim {name} is {phase}{deleting}")
        elif _handle(pv) not in volumes:
            problems.append(
                f"claim {name}: PV {pv['metadata']['name']} names volume {_handle(pv)}, not in the driver"
            )
    total = len(snap.claims)
    return _verdict(
        "every claim is Bound to a PV whose volume exists",
        problems,
        f"{total - len(problems)}/{total} claims bound, volumes present",
    )


def volumes_accounted(snap: Snapshot) -> Verdict:
    owners: dict[str, list[str]] = {}
    for name, pv in snap.volumes.items():
        owners.setdefault(_handle(pv), []).append(name)
    driver = {v["volume_id"]: v for v in snap.driver_volumes}
    leaked = [
        f"volume {vid} ({v['name']}) leaked: no PV" for vid, v in sorted(driver.items()) if vid not in owners
    ]
    duplicated = [
        f"volume {vid} backs {len(owners[vid])} PVs: {owners[vid]}"
        for vid in sorted(driver)
        if len(owners.get(vid, [])) > 1
    ]
    missing = [
        f"PV {names[0]} names volume {h}, which the driver lacks"
        for h, names in sorted(owners.items())
        if h not in driver
    ]
    problems = leaked + duplicated + missing
    figure = (
        f"{len(driver)} driver volumes, {len(snap.volumes)} PVs: "
        f"{len(leaked)} leaked, {len(duplicated)} duplicated, {len(missing)} PVs without volume"
    )
    return _verdict("every volume belongs to exactly one PV", problems, figure)


def _ours(finalizers: Iterable[str]) -> list[str]:
    return [f for f in finalizers if f.startswith(OUR_FINALIZERS)]


def nothing_stuck(snap: Snapshot) -> Verdict:
    problems = []
    for kind, objects in (("PVC", snap.claims), ("PV", snap.volumes), ("VolumeAttachment", snap.attachments)):
        for name, obj in sorted(objects.items()):
            meta = obj["metadata"]
            ours = _ours(meta.get("finalizers") or ())
            if meta.get("deletionTimestamp") and ours:
                problems.append(f"{kind} {name} deleted at {meta['deletionTimestamp']}, still has {ours}")
    total = len(snap.claims) + len(snap.volumes) + len(snap.attachments)
    return _verdict(
        "nothing is stuck deleting with our finalizers",
        problems,
        f"{len(problems)} of {total} objects deleting with our finalizers",
    )


def attachments_match(snap: Snapshot) -> Verdict:
    problems = []
    running = 0
    for name, pod in sorted(snap.pods.items()):
        if (pod.get("status") or {}).get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        node = str(pod["spec"].get("nodeName") or "")
        for volume in pod["spec"].get("volumes") or ():
            claim = snap.claims.get(str((volume.get("persistentVolumeClaim") or {}).get("claimName") or ""))
            pv = snap.volumes.get(str(((claim or {}).get("spec") or {}).get("volumeName") or ""))
            if pv is None:
                problems.append(f"running pod {name} mounts a claim without PV")
                continue
            running += 1
            va = snap.attachments.get(attachment_name(_handle(pv), DRIVER_NAME, node))
            if va is None or not (va.get("status") or {}).get("attached"):
                state = "not attached" if va else "has no VolumeAttachment"
                problems.append(f"running pod {name}: volume {_handle(pv)} {state}")
    handles = {_handle(pv): name for name, pv in snap.volumes.items()}
    published = 0
    for volume in snap.driver_volumes:
        for node in volume.get("published_node_ids") or ():
            published += 1
            if attachment_name(volume["volume_id"], DRIVER_NAME, node) not in snap.attachments:
                owner = handles.get(volume["volume_id"], "no PV")
                problems.append(
                    f"volume {volume['volume_id']} ({owner}) published to {node} without a VolumeAttachment"
                )
    figure = (
        f"{running} volumes of running pods attached, "
        f"{published} driver publications each with a VolumeAttachment"
    )
    return _verdict("attachments match running pods and publications", problems, figure)


def capacity_matches(snap: Snapshot, records: Iterable[ClaimRecord]) -> Verdict:
    problems = []
    checked = resized = waiting = 0
    mounted = {
        str((v.get("persistentVolumeClaim") or {}).get("claimName"))
        for pod in snap.pods.values()
        for v in pod["spec"].get("volumes") or ()
    }
    for record in records:
        claim = snap.claims.get(record.name)
        if record.deleted or claim is None:
            continue
        checked += 1
        resized += record.resizes > 0
        have = capacity_mi(claim)
        if have == record.requested_mi:
            continue
        pv = snap.volumes.get(str(claim["spec"].get("volumeName") or ""))
        pv_mi = capacity_mi({"status": {"capacity": (pv or {}).get("spec", {}).get("capacity") or {}}})
        if pv_mi == record.requested_mi and record.name not in mounted:
            waiting += 1
            continue
        problems.append(
            f"claim {record.name}: capacity {have}Mi, PV {pv_mi}Mi, last request {record.requested_mi}Mi"
        )
    figure = (
        f"{checked - len(problems)}/{checked} claims at their last request, {resized} of them resized "
        f"({waiting} await the file-system resize at the next mount)"
    )
    return _verdict("each claim's capacity equals its last request", problems, figure)


def _last(lines: str) -> str:
    return lines.splitlines()[-1] if lines else ""


def no_crash_loop(exits: list[Exit], restarts: dict[str, int]) -> Verdict:
    unexpected = [e for e in exits if not e.expected]
    bad_terms = [e for e in exits if e.signal == "SIGTERM" and e.code != 0]
    problems = [f"{e.name} exited on its own with code {e.code}: {_last(e.last_lines)}" for e in unexpected]
    problems += [f"{e.name} exited {e.code} on SIGTERM" for e in bad_terms]
    scheduled = sum(1 for e in exits if e.expected and not e.final)
    final = [e for e in exits if e.final]
    figure = (
        f"{len(unexpected)} exits on their own; {scheduled} scheduled kills/stops, "
        f"{sum(restarts.values())} restarts; "
        f"{sum(e.code == 0 for e in final)}/{len(final)} exited 0 when stopped at the end"
    )
    return _verdict("no sidecar ended in a crash loop", problems, figure)


def leases_live(snap: Snapshot, worst: dict[str, float], alive: dict[str, bool]) -> Verdict:
    problems = []
    holders = []
    for component, overdue in sorted(worst.items()):
        if overdue > LEASE_SLACK:
            problems.append(f"{component}: a dead identity held the Lease {overdue:.1f}s past its expiry")
    for component, lease in sorted(snap.leases.items()):
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
        holders.append(f"{component}={holder or 'none'}")
        if holder and not alive.get(holder, False):
            problems.append(f"{component}: held by {holder}, which is not running")
    longest = max(worst.values(), default=0.0)
    figure = (
        f"holders {', '.join(holders)}; "
        f"longest a dead identity held an expired Lease: {max(longest, 0.0):.1f}s "
        f"(allowed {LEASE_SLACK:g}s past the {LEASE_DURATION:g}s lease)"
    )
    return _verdict("no Lease held by a dead identity past its duration", problems, figure)
