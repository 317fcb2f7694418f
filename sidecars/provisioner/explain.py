"""`csi-provisioner explain pvc NAMESPACE/NAME`: what the provisioner would do with one claim now, and why.

The controllers are built exactly as the entrypoint builds them (`__main__.settle_gates` and
`discover`, then `controller.build`) on a runtime that never runs; their informer caches are seeded
with what explain read (the claim, its StorageClass and PV, the nodes and CSINodes). Then the claim
controller's own decisions are asked in `sync`'s order:

1. `ClaimController.should_provision` (bound? being deleted? asked for this driver? StorageClass?
   WaitForFirstConsumer without a selected node?) — the sentence says which of its conditions held;
2. `ClaimController.preflight`: the first checks `provision_claim` makes (PV already saved,
   StorageClass of another provisioner, selected node gone);
3. `RequestBuilder.prepare(..., protect=False)` — every request check (capabilities, selector, data
   source, fstype, access modes, topology, secrets, parameters, VolumeAttributesClass), read-only.

If all pass, the report names the CreateVolume it would send, and the last ProvisioningFailed event
if the previous attempt failed in the driver. Provisioning-intent claims being deleted are explained
as the intent's abandon path. Nothing is written: no event, no finalizer, no CSI call but the
capability queries.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from common import explain
from common.errors import CapabilityError
from common.explain import Report, Session
from common.kube.informer import InformerFactory
from common.kube.resources import (
    CSI_NODES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    STORAGE_CLASSES,
)
from common.quantity import format_quantity
from common.standardflags import apply_logging_flags
from sidecars.provisioner import names
from sidecars.provisioner.claim import ClaimController
from sidecars.provisioner.cli import PROGRAM, ProvisionerConfig, build_flagset
from sidecars.provisioner.intent import recorded
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState

Obj = dict[str, Any]
RETRIES = "csi-provisioner retries with backoff and records ProvisioningFailed events"


async def amain(argv: list[str]) -> int:
    """`explain pvc NAMESPACE/NAME [flags]`: print the explanation."""
    flags, ref = explain.parse(build_flagset(), argv, kind="pvc", ref="NAMESPACE/NAME")
    apply_logging_flags(flags)
    config = ProvisionerConfig.from_flags(flags)
    namespace, name = explain.split_ref(ref, namespaced=True)
    async with Session.open(PROGRAM, config.standard, use_kubeconfig_env=True) as session:
        report = await explain_pvc(session, config, namespace, name)
    sys.stdout.write(report.render())
    return 0


async def explain_pvc(session: Session, config: ProvisionerConfig, namespace: str, name: str) -> Report:
    """The explanation of claim `namespace/name` (see the module docstring)."""
    driver = session.driver
    report = Report(
        f"PersistentVolumeClaim {namespace}/{name}", f"{PROGRAM} for {driver.name or driver.address}"
    )
    claim = await session.get(PERSISTENT_VOLUME_CLAIMS, name, namespace=namespace)
    if claim is None:
        report.decide(f"Nothing to do: PersistentVolumeClaim {namespace}/{name} does not exist.")
        return report
    events = await session.events(claim)
    if not driver.reachable:
        report.decide(driver.unreachable_sentence(PROGRAM))
    else:
        await _explain(report, session, config, claim, events)
    explain.finalizer_facts(report, claim)
    explain.event_facts(report, events)
    return report


async def _explain(
    report: Report, session: Session, config: ProvisionerConfig, claim: Obj, events: list[Obj]
) -> None:
    # The start-up decisions live in the entrypoint, which imports this module: import them when needed.
    from sidecars.provisioner.__main__ import discover, settle_gates
    from sidecars.provisioner.controller import build

    rt = session.runtime(config.standard)
    config = await settle_gates(rt, config)
    try:
        driver = await discover(rt, config)
    except CapabilityError as err:
        report.decide(f"Waiting: csi-provisioner does not start with this driver: {err}.")
        return
    claims = build(rt, config, driver).claims
    topology = driver.topology and not config.node_deployment
    sc = await _seed(session, rt.factory, claims, claim, topology=topology)
    pv_name = _volume_name(claims, claim)
    if recorded(claim):
        report.note(f"It carries the provisioning intent: CreateVolume may have run for it (as {pv_name}).")
    unsaved = pv_name is None or claims.volumes.get(pv_name) is None
    if (
        recorded(claim)
        and names.deleting(claim)
        and not (claim.get("spec") or {}).get("volumeName")
        and unsaved
    ):
        report.decide(
            f"Would clean up: the claim is being deleted before its PV was saved, so csi-provisioner "
            f"deletes the volume {pv_name} it may have created (CreateVolume with the same name, then "
            f"DeleteVolume), then removes {names.INTENT_FINALIZER}."
        )
        return
    try:
        provision = claims.should_provision(claim)
    except ProvisionError as err:
        report.decide(f"Waiting: {err}; {RETRIES}.")
        return
    if not provision:
        report.decide(await _why_not(session, claims, claim, sc))
        return
    node = names.selected_node(claim) or ""
    blocker = claims.preflight(claim, sc)
    if blocker is None:
        try:
            assert sc is not None  # should_provision raised otherwise
            prepared = await claims.provisioner.builder.prepare(claim, sc, node, protect=False)
        except (ProvisionError, IgnoredClaim) as err:
            blocker = err
    if blocker is not None:
        report.decide(_blocked(blocker, node))
        return
    request = prepared.request
    size = format_quantity(request.capacity_range.required_bytes, binary=True)
    call = f"CreateVolume(name {request.name!r}, {size}"
    if request.accessibility_requirements.requisite:
        segments = [dict(t.segments) for t in request.accessibility_requirements.requisite]
        call += f", requisite topology {segments}"
    call += ")"
    failed = explain.last_warning(events, ("ProvisioningFailed", "ProvisioningSucceeded", "Provisioning"))
    if failed is not None:
        report.decide(
            f"Retrying with backoff: would call {call} again; the last attempt failed: "
            f"{failed.get('message')}"
        )
    else:
        report.decide(f"Would provision: {call}, then save PersistentVolume {request.name}.")


def _blocked(err: ProvisionError | IgnoredClaim, node: str) -> str:
    if isinstance(err, IgnoredClaim):
        return f"Nothing to do: csi-provisioner ignores the claim: {err}."
    if err.stop and "already exists" in str(err):
        return f"Nothing to do: {err}; the PV controller binds it to the claim."
    if err.state is ProvisioningState.RESCHEDULE and node:
        return (
            f"Waiting for the scheduler: {err}; csi-provisioner removes {names.ANN_SELECTED_NODE} so "
            "that the pod is scheduled again (ProvisioningFailed event)."
        )
    if err.stop:
        return f"Stopped: {err}; csi-provisioner does not try again until the claim changes."
    return f"Waiting: {err}; {RETRIES}."


async def _why_not(
    session: Session, claims: ClaimController, claim: Obj, sc: Mapping[str, Any] | None
) -> str:
    """Which of `should_provision`'s conditions said no, in its order."""
    driver = claims.provisioner.driver
    volume = (claim.get("spec") or {}).get("volumeName")
    if volume:
        return f"Nothing to do: it is bound to PersistentVolume {volume}."
    if names.deleting(claim):
        return "Nothing to do: the claim is being deleted and no volume is being created for it."
    asked = names.storage_provisioner(claim)
    if asked is None:
        named = f" (StorageClass {names.claim_class(claim)!r} names {sc.get('provisioner')!r})" if sc else ""
        return (
            "Waiting: no provisioner was asked for this claim yet: it has no "
            f"{names.ANN_STORAGE_PROVISIONER} annotation{named}; kube-controller-manager's PV controller "
            "sets it for a claim whose StorageClass names an external provisioner."
        )
    if asked != driver or not claims.provisioner.owns(claim):
        return (
            f"Nothing to do: it asks for provisioner {asked!r} ({names.ANN_STORAGE_PROVISIONER}), "
            f"not {driver!r}."
        )
    users = await _pods_using(session, claim)
    pods = f"pods using it: {', '.join(users)}" if users else "no pod uses it"
    return (
        f"Waiting for a consumer: StorageClass {names.claim_class(claim)!r} binds WaitForFirstConsumer and "
        f"no pod using the claim has been scheduled yet (no {names.ANN_SELECTED_NODE} annotation; {pods})."
    )


async def _pods_using(session: Session, claim: Mapping[str, Any]) -> list[str]:
    meta = claim.get("metadata") or {}
    pods = (await session.kube.list(PODS, namespace=str(meta.get("namespace", "")))).get("items") or []
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if any(
            (v.get("persistentVolumeClaim") or {}).get("claimName") == meta.get("name")
            for v in (p.get("spec") or {}).get("volumes") or ()
        )
    )


def _volume_name(claims: ClaimController, claim: Mapping[str, Any]) -> str | None:
    try:
        return claims.provisioner.builder.volume_name(claim)
    except ProvisionError:
        return None


async def _seed(
    session: Session, factory: InformerFactory, claims: ClaimController, claim: Obj, *, topology: bool
) -> Obj | None:
    """The caches the decisions read: the claim (and a clone source), its PV and StorageClass, nodes."""
    explain.seed(claims.claims, [claim])
    source = (
        (claim.get("spec") or {}).get("dataSource") or (claim.get("spec") or {}).get("dataSourceRef") or {}
    )
    if source.get("kind") == "PersistentVolumeClaim":
        namespace = source.get("namespace") or (claim.get("metadata") or {}).get("namespace")
        found = await session.get(PERSISTENT_VOLUME_CLAIMS, str(source.get("name", "")), namespace=namespace)
        explain.seed(claims.claims, [found] if found else [])
    for name in {(claim.get("spec") or {}).get("volumeName"), _volume_name(claims, claim)} - {None, ""}:
        pv = await session.get(PERSISTENT_VOLUMES, str(name))
        explain.seed(claims.volumes, [pv] if pv else [])
    sc = await session.get(STORAGE_CLASSES, names.claim_class(claim)) if names.claim_class(claim) else None
    explain.seed(claims.classes, [sc] if sc else [])
    if topology:  # the informers build() made for the topology (the factory hands out the same ones)
        explain.seed(factory.informer(CSI_NODES), (await session.kube.list(CSI_NODES)).get("items") or [])
        nodes = factory.informer(NODES, transform=names.slim_node)
        explain.seed(nodes, (await session.kube.list(NODES)).get("items") or [])
    return sc
