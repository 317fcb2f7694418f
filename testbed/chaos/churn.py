"""The churn: claims, pods, resizes and deletions at a steady rate, as users would make them.

`Churn.setup()` creates the soak's Secret and its two StorageClasses (`chaos-immediate`,
`chaos-wait`), both expandable and both naming the Secret for every CSI operation that takes one
(provisioner, controller-publish, controller-expand, node-stage, node-publish, node-expand), so that
secrets flow through every sidecar — and must never show in their output.

`apply(step)` performs one scheduled step. A step whose precondition the cluster has not reached yet
(resizing, or deleting the pod of a WaitForFirstConsumer claim, before the claim is Bound) waits in
order with every later step of that claim, and is tried again at each tick; steps still waiting
when the churn stops are dropped and counted. `observe(snapshot)` marks operations completed as the
cluster shows them (claim Bound, pod Running, resize reflected in the claim's capacity, pod gone,
claim and its PV gone); `ClaimRecord.requested_mi` is each claim's last request the API accepted.
"""

from __future__ import annotations

import base64
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common.kube.client import ApiError
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PODS, SECRETS, STORAGE_CLASSES
from common.quantity import parse_quantity
from testbed.chaos.clients import Api
from testbed.chaos.fleet import NAMESPACE
from testbed.chaos.observe import Snapshot
from testbed.chaos.schedule import IMMEDIATE, WAIT, ChurnAction, ChurnStep
from testbed.launch import DRIVER_NAME, NODE

Obj = dict[str, Any]
MiB = 1 << 20
SECRET_NAME = "chaos-secret"
CLASS_NAMES = {IMMEDIATE: "chaos-immediate", WAIT: "chaos-wait"}
SECRET_OPERATIONS = (
    "provisioner",
    "controller-publish",
    "controller-expand",
    "node-stage",
    "node-publish",
    "node-expand",
)


@dataclass(frozen=True)
class SoakSecret:
    """The credentials every StorageClass names; their values must never appear in any output."""

    username: str = field(default_factory=lambda: "chaos-user-" + secrets.token_hex(8))
    password: str = field(default_factory=lambda: "chaos-pass-" + secrets.token_hex(8))

    @property
    def values(self) -> tuple[str, str]:
        return self.username, self.password

    def manifest(self) -> Obj:
        data = {
            k: base64.b64encode(v.encode()).decode()
            for k, v in (("username", self.username), ("password", self.password))
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": data,
        }


def storage_class(binding: str) -> Obj:
    parameters = {}
    for operation in SECRET_OPERATIONS:
        parameters[f"csi.storage.k8s.io/{operation}-secret-name"] = SECRET_NAME
        parameters[f"csi.storage.k8s.io/{operation}-secret-namespace"] = "${pvc.namespace}"
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS_NAMES[binding]},
        "provisioner": DRIVER_NAME,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": True,
        "parameters": parameters,
    }


def claim_manifest(name: str, binding: str, size_mi: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "chaos"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{size_mi}Mi"}},
            "storageClassName": CLASS_NAMES[binding],
        },
    }


def pod_manifest(name: str, claim: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "chaos"}},
        "spec": {
            "nodeName": NODE,
            "containers": [
                {"name": "app", "image": "busybox", "volumeMounts": [{"mountPath": "/data", "name": "vol"}]}
            ],
            "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def capacity_mi(claim: Obj) -> float | None:
    """The claim's `status.capacity.storage` in MiB (None when it has none)."""
    value = ((claim.get("status") or {}).get("capacity") or {}).get("storage")
    return None if value is None else float(parse_quantity(str(value)) / MiB)


@dataclass
class ClaimRecord:
    """What the churn did to one claim, and what it has seen of it since."""

    name: str
    binding: str
    requested_mi: int
    """The last storage request the API accepted."""
    pod: str = ""
    """The current pod's name ("" when it has none)."""
    pods_made: int = 0
    resizes: int = 0
    deleted: bool = False
    volume: str = ""
    """The PV it was seen Bound to."""
    bound: bool = False
    running: str = ""
    """The pod last seen Running."""
    resize_pending: bool = False
    deleting_pods: set[str] = field(default_factory=set)
    gone: bool = False
    """Deleted, and seen gone with its PV."""


@dataclass
class Churn:
    """Applies churn steps and counts what completed (see the module docstring)."""

    api: Api
    secret: SoakSecret
    records: dict[str, ClaimRecord] = field(default_factory=dict)
    done: Counter[str] = field(default_factory=Counter)
    """Operations completed, as the cluster showed them."""
    requested: Counter[str] = field(default_factory=Counter)
    """Steps performed (the API accepted them)."""
    waiting: list[ChurnStep] = field(default_factory=list)
    dropped: int = 0
    failed: int = 0
    """Steps the API refused even after retries."""
    latest: Snapshot | None = None

    async def setup(self) -> None:
        await self.api.create(SECRETS, self.secret.manifest())
        for binding in (IMMEDIATE, WAIT):
            await self.api.create(STORAGE_CLASSES, storage_class(binding))

    # --- steps ---------------------------------------------------------------------------------

    def _ready(self, step: ChurnStep) -> bool:
        record = self.records.get(step.claim)
        if record is None or record.deleted or step.action is ChurnAction.DELETE_CLAIM:
            return True
        if step.action is ChurnAction.RESIZE or (
            step.action is ChurnAction.DELETE_POD and record.binding == WAIT
        ):
            return record.bound
        return True

    async def apply(self, step: ChurnStep) -> None:
        """Perform `step`, or queue it behind the waiting steps of its claim."""
        if any(w.claim == step.claim for w in self.waiting) or not self._ready(step):
            if step.action is ChurnAction.DELETE_CLAIM:  # deleting: nothing before it matters any more
                self.dropped += sum(1 for w in self.waiting if w.claim == step.claim)
                self.waiting = [w for w in self.waiting if w.claim != step.claim]
            else:
                self.waiting.append(step)
                return
        await self._perform(step)

    async def retry_waiting(self) -> None:
        """Perform the waiting steps whose precondition now holds, in order per claim."""
        blocked: set[str] = set()
        still: list[ChurnStep] = []
        for step in self.waiting:
            if step.claim in blocked or not self._ready(step):
                blocked.add(step.claim)
                still.append(step)
                continue
            await self._perform(step)
        self.waiting = still

    def stop(self) -> None:
        """Drop what still waits: the churn is over."""
        self.dropped += len(self.waiting)
        self.waiting = []

    async def _perform(self, step: ChurnStep) -> None:
        try:
            await getattr(self, "_" + step.action.name.lower())(step)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError):  # refused even after retries
            self.failed += 1
            return
        self.requested[step.action] += 1

    async def _create_claim(self, step: ChurnStep) -> None:
        record = ClaimRecord(step.claim, step.binding, step.size_mi)
        await self.api.create(
            PERSISTENT_VOLUME_CLAIMS, claim_manifest(step.claim, step.binding, step.size_mi)
        )
        self.records[step.claim] = record
        if step.binding == WAIT:
            await self._create_pod(step)

    async def _create_pod(self, step: ChurnStep) -> None:
        record = self.records.get(step.claim)
        if record is None or record.deleted or record.pod:
            return
        record.pods_made += 1
        name = f"{step.claim}-pod-{record.pods_made}"
        await self.api.create(PODS, pod_manifest(name, step.claim))
        record.pod = name

    async def _resize(self, step: ChurnStep) -> None:
        record = self.records.get(step.claim)
        if record is None or record.deleted:
            return
        body = {"spec": {"resources": {"requests": {"storage": f"{step.size_mi}Mi"}}}}
        await self.api.patch(PERSISTENT_VOLUME_CLAIMS, step.claim, body, namespace=NAMESPACE)
        record.requested_mi = step.size_mi
        record.resizes += 1
        record.resize_pending = True

    async def _delete_pod(self, step: ChurnStep) -> None:
        record = self.records.get(step.claim)
        if record is None or not record.pod:
            return
        await self.api.delete(PODS, record.pod, NAMESPACE)
        record.deleting_pods.add(record.pod)
        record.pod = ""

    async def _delete_claim(self, step: ChurnStep) -> None:
        record = self.records.get(step.claim)
        if record is None or record.deleted:
            return
        await self._delete_pod(step)
        await self.api.delete(PERSISTENT_VOLUME_CLAIMS, step.claim, NAMESPACE)
        record.deleted = True

    # --- what completed --------------------------------------------------------------------------

    def observe(self, snap: Snapshot) -> None:
        """Count the operations the snapshot shows completed."""
        self.latest = snap
        for record in self.records.values():
            claim = snap.claims.get(record.name)
            if claim is not None and not record.bound and (claim.get("status") or {}).get("phase") == "Bound":
                record.bound = True
                record.volume = str(claim["spec"].get("volumeName") or "")
                self.done["claim bound"] += 1
            pod = snap.pods.get(record.pod) if record.pod else None
            if (
                pod is not None
                and record.running != record.pod
                and (pod.get("status") or {}).get("phase") == "Running"
            ):
                record.running = record.pod
                self.done["pod running"] += 1
            if record.resize_pending and claim is not None and capacity_mi(claim) == record.requested_mi:
                record.resize_pending = False
                self.done["resize"] += 1
            for gone in [p for p in record.deleting_pods if p not in snap.pods]:
                record.deleting_pods.discard(gone)
                self.done["pod deleted"] += 1
            if record.deleted and not record.gone and claim is None and record.volume not in snap.volumes:
                record.gone = True
                self.done["claim deleted"] += 1

    def live(self) -> list[ClaimRecord]:
        return [r for r in self.records.values() if not r.deleted]
