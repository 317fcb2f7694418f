"""RBAC: our roles grant exactly upstream's rules; the check that they cover a sidecar's API calls.

* The rules in deploy/kubernetes/rbac/<sidecar>.yaml must equal upstream's deploy/kubernetes/rbac.yaml
  (`UPSTREAM`, written down from external-provisioner v6.3.0, external-attacher v4.12.0 and
  external-resizer v2.2; upstream's RBAC is the contract a drop-in must live with).
* `check(records, program)` compares what a sidecar asked the API server for (the test bed's request
  log, told apart by the User-Agent `<program>/<version>`) with those rules: a request they do not
  grant fails, unless upstream makes it too without a grant (`FORBIDDEN_UPSTREAM_TOO`, warned) or it
  is a known gap of ours (`KNOWN_GAPS`, xfail until fixed); a rule granted but unused is a warning
  (it may serve a path the scenario does not take). test_rbac_usage.py runs the sidecars.

csi-node-driver-registrar and livenessprobe have no Kubernetes flags at all, so they cannot call the API.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
import yaml

from testbed.apiserver import RequestRecord

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "deploy" / "kubernetes" / "rbac"
DRIVER = "hostpath.csi.k8s.io"
NAMESPACE = "default"

Grant = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)."""


def rules(group: str, resource: str, *verbs: str) -> set[Grant]:
    return {(group, resource, verb) for verb in verbs}


LEASES = rules("coordination.k8s.io", "leases", "get", "watch", "list", "delete", "update", "create")

UPSTREAM: dict[str, tuple[set[Grant], set[Grant]]] = {
    # program: (ClusterRole external-<x>-runner, Role external-<x>-cfg)
    "csi-provisioner": (
        rules("", "persistentvolumes", "get", "list", "watch", "create", "patch", "delete")
        | rules("", "persistentvolumeclaims", "get", "list", "watch", "update")
        | rules("storage.k8s.io", "storageclasses", "get", "list", "watch")
        | rules("", "events", "list", "watch", "create", "update", "patch")
        | rules("snapshot.storage.k8s.io", "volumesnapshots", "get", "list", "watch", "update")
        | rules("snapshot.storage.k8s.io", "volumesnapshotcontents", "get", "list")
        | rules("storage.k8s.io", "csinodes", "get", "list", "watch")
        | rules("", "nodes", "get", "list", "watch")
        | rules("storage.k8s.io", "volumeattachments", "get", "list", "watch")
        | rules("storage.k8s.io", "volumeattributesclasses", "get"),
        LEASES
        | rules("storage.k8s.io", "csistoragecapacities", "get", "list", "watch", "create", "update", "patch")
        | rules("storage.k8s.io", "csistoragecapacities", "delete")
        | rules("", "pods", "get")
        | rules("apps", "replicasets", "get"),
    ),
    "csi-attacher": (
        rules("", "persistentvolumes", "get", "list", "watch", "patch")
        | rules("storage.k8s.io", "csinodes", "get", "list", "watch")
        | rules("storage.k8s.io", "volumeattachments", "get", "list", "watch", "patch")
        | rules("storage.k8s.io", "volumeattachments/status", "patch"),
        LEASES,
    ),
    "csi-resizer": (
        rules("", "persistentvolumes", "get", "list", "watch", "patch")
        | rules("", "persistentvolumeclaims", "get", "list", "watch")
        | rules("", "pods", "get", "list", "watch")
        | rules("", "persistentvolumeclaims/status", "patch")
        | rules("", "events", "list", "watch", "create", "update", "patch")
        | rules("storage.k8s.io", "volumeattributesclasses", "get", "list", "watch"),
        LEASES,
    ),
}

FILES = {
    "csi-provisioner": "provisioner.yaml",
    "csi-attacher": "attacher.yaml",
    "csi-resizer": "resizer.yaml",
}

FORBIDDEN_UPSTREAM_TOO: dict[str, set[Grant]] = {
    # client-go's leader election records a "became leader" Event on the Lease (csi-lib-utils
    # leaderelection), and external-attacher's RBAC grants no events: upstream's attacher gets 403 and
    # drops it. Ours does the same; the scenario makes the test bed refuse it as RBAC would.
    "csi-attacher": rules("", "events", "create", "patch"),
}
"""Requests upstream makes too without a grant; refused with 403 during the scenario, then reported."""

KNOWN_GAPS: dict[str, set[Grant]] = {}
"""Requests our sidecar makes that upstream's RBAC does not grant, known and to be fixed: xfail."""


class Roles:
    """The ClusterRole (cluster-wide) and Role (one namespace) of one sidecar, as grants."""

    def __init__(self, path: Path) -> None:
        self.cluster: set[Grant] = set()
        self.namespaced: dict[str, set[Grant]] = {}
        for document in yaml.safe_load_all(path.read_text()):
            grants = {
                (group, resource, verb)
                for rule in document["rules"]
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
            if document["kind"] == "ClusterRole":
                self.cluster |= grants
            else:
                self.namespaced.setdefault(document["metadata"]["namespace"], set()).update(grants)

    def allows(self, grant: Grant, namespace: str) -> bool:
        return grant in self.cluster or (bool(namespace) and grant in self.namespaced.get(namespace, set()))

    def all(self) -> set[Grant]:
        return self.cluster.union(*self.namespaced.values())


@pytest.mark.parametrize("program", sorted(UPSTREAM))
def test_roles_grant_upstreams_rules(program: str) -> None:
    roles = Roles(RBAC / FILES[program])
    cluster, namespaced = UPSTREAM[program]
    assert roles.cluster == cluster
    assert roles.namespaced == {NAMESPACE: namespaced}


@pytest.mark.parametrize("package", ["registrar", "livenessprobe"])
def test_node_sidecars_cannot_reach_the_api(package: str) -> None:
    flagset = importlib.import_module(f"sidecars.{package}.cli").build_flagset()
    for flag in ("kubeconfig", "master", "kube-api-qps", "leader-election"):
        assert not flagset.defined(flag)


# --- comparing a request log with the roles ---------------------------------------------------------


def used(records: list[RequestRecord], program: str) -> set[tuple[Grant, str]]:
    """Each (grant, namespace) the program's requests needed; discovery requests need no grant."""
    return {
        ((r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb), r.namespace)
        for r in records
        if r.user_agent.startswith(program + "/") and r.resource
    }


def show(grants: set[Grant]) -> str:
    return ", ".join(f"{group or 'core'}/{resource}:{verb}" for group, resource, verb in sorted(grants))


def check(records: list[RequestRecord], program: str) -> None:
    """Fail on a request the RBAC does not grant; report upstream-like refusals, known gaps, unused rules."""
    roles = Roles(RBAC / FILES[program])
    needed = used(records, program)
    assert needed, f"{program} made no API request: the scenario did not run"
    ungranted = {grant for grant, namespace in needed if not roles.allows(grant, namespace)}
    refused = ungranted & FORBIDDEN_UPSTREAM_TOO.get(program, set())
    gaps = ungranted & KNOWN_GAPS.get(program, set())
    missing = ungranted - refused - gaps
    assert not missing, f"{program} needs rules its RBAC does not grant: {show(missing)}"
    stale = KNOWN_GAPS.get(program, set()) - gaps
    assert not stale, f"{program} no longer needs {show(stale)}: remove it from KNOWN_GAPS"
    if refused:
        warnings.warn(
            f"{program}: refused like upstream's (no grant, best effort): {show(refused)}", stacklevel=1
        )
    unused = roles.all() - {grant for grant, _ in needed}
    if unused:
        warnings.warn(
            f"{program}: granted (as upstream) but unused in this scenario: {show(unused)}", stacklevel=1
        )
    if gaps:
        pytest.xfail(f"{program} needs {show(gaps)}, which upstream's RBAC does not grant (KNOWN_GAPS)")
