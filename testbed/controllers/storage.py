"""Storage rules the stand-ins share: annotation names, the attachment name, claim/volume/pod predicates.

Each helper is the Python of one upstream function, named after it in its docstring
(`k8s.io/component-helpers/storage/volume`, `pkg/volume/util`, `pkg/volume/csi`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from testbed.apiserver.quantity import parse_quantity

Obj = dict[str, Any]

ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_DYNAMICALLY_PROVISIONED = "pv.kubernetes.io/provisioned-by"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_PRE_RESIZE_CAPACITY = "volume.alpha.kubernetes.io/pre-resize-capacity"
ANN_NODE_ID = "csi.volume.kubernetes.io/nodeid"
ANN_CONTROLLER_MANAGED_ATTACH = "volumes.kubernetes.io/controller-managed-attach-detach"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
CSI_PLUGIN = "kubernetes.io/csi"

MIGRATED_PLUGINS = {
    "kubernetes.io/aws-ebs": "ebs.csi.aws.com",
    "kubernetes.io/azure-disk": "disk.csi.azure.com",
    "kubernetes.io/azure-file": "file.csi.azure.com",
    "kubernetes.io/cinder": "cinder.csi.openstack.org",
    "kubernetes.io/gce-pd": "pd.csi.storage.gke.io",
    "kubernetes.io/portworx-volume": "pxd.portworx.com",
    "kubernetes.io/vsphere-volume": "csi.vsphere.vmware.com",
}
"""In-tree provisioners whose CSI migration is complete: the PV controller hands them to the CSI driver."""


def attachment_name(volume_handle: str, driver: str, node: str) -> str:
    """`getAttachmentName` (pkg/volume/csi/csi_attacher.go): `csi-<sha256(handle+driver+node)>`."""
    return "csi-" + hashlib.sha256(f"{volume_handle}{driver}{node}".encode()).hexdigest()


def unique_volume_name(driver: str, volume_handle: str) -> str:
    """The volume manager's unique name of a CSI volume: `kubernetes.io/csi/<driver>^<handle>`."""
    return f"{CSI_PLUGIN}/{driver}^{volume_handle}"


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def storage(resources: Any) -> Fraction | None:
    """The `storage` quantity of a resource list, or None."""
    if not isinstance(resources, dict) or "storage" not in resources:
        return None
    try:
        return parse_quantity(resources["storage"])
    except (TypeError, ValueError):
        return None


def claim_class(claim: Obj) -> str:
    """`GetPersistentVolumeClaimClass`: the beta annotation wins, then `spec.storageClassName`."""
    beta = annotations_of(claim).get(ANN_BETA_STORAGE_CLASS)
    if beta is not None:
        return beta
    return str((claim.get("spec") or {}).get("storageClassName") or "")


def volume_class(volume: Obj) -> str:
    """`GetPersistentVolumeClass`: the beta annotation wins, then `spec.storageClassName`."""
    beta = annotations_of(volume).get(ANN_BETA_STORAGE_CLASS)
    if beta is not None:
        return beta
    return str((volume.get("spec") or {}).get("storageClassName") or "")


def is_volume_bound_to_claim(volume: Obj, claim: Obj) -> bool:
    """`IsVolumeBoundToClaim`: claimRef names the claim, and its uid is empty or the claim's."""
    ref = (volume.get("spec") or {}).get("claimRef")
    if not ref:
        return False
    meta = claim["metadata"]
    if ref.get("name") != meta.get("name") or ref.get("namespace") != meta.get("namespace"):
        return False
    return not ref.get("uid") or ref.get("uid") == meta.get("uid")


def pod_claim_names(pod: Obj) -> list[tuple[str, bool]]:
    """The claims a pod's volumes use, with their `readOnly` (generic ephemeral: `<pod>-<volume>`)."""
    claims = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if source := volume.get("persistentVolumeClaim"):
            claims.append((str(source.get("claimName", "")), bool(source.get("readOnly"))))
        elif volume.get("ephemeral") is not None:
            claims.append((f"{pod['metadata']['name']}-{volume.get('name', '')}", False))
    return claims


def unscheduled_pods_using(pods: Iterable[Obj], claim: Obj) -> list[str]:
    """`findNonScheduledPodsByPVC`: names of the claim's namespace's pods without a node that use it."""
    meta = claim["metadata"]
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if pod["metadata"].get("namespace") == meta["namespace"]
        and not (pod.get("spec") or {}).get("nodeName")
        and meta["name"] in {name for name, _ in pod_claim_names(pod)}
    )


def pod_is_terminated(pod: Obj) -> bool:
    """`IsPodTerminated`: Failed/Succeeded, or deleting with no container still running."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return True
    if not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in status.get(key) or []:
            state = container.get("state") or {}
            if not (state.get("terminated") or state.get("waiting")):
                return False
    return True


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A `metav1.LabelSelector` (matchLabels and matchExpressions) against a label map."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_requirement(expr, labels) for expr in selector.get("matchExpressions") or [])


def _requirement(expr: Obj, labels: dict[str, str]) -> bool:
    key, operator, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            actual, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def node_affinity_matches(volume: Obj, node: Obj) -> bool:
    """`CheckNodeAffinity`: the PV's required node selector terms (ORed) against the node's labels."""
    required = (((volume.get("spec") or {}).get("nodeAffinity") or {}).get("required")) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    meta = node.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    fields = {"metadata.name": str(meta.get("name", ""))}
    for term in terms:
        expressions = term.get("matchExpressions") or []
        by_field = term.get("matchFields") or []
        if not (expressions or by_field):
            continue
        if all(_requirement(e, labels) for e in expressions) and all(
            _requirement(f, fields) for f in by_field
        ):
            return True
    return False
