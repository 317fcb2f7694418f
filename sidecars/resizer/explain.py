"""`csi-resizer explain pvc NAMESPACE/NAME`: what the resizer would do with one claim now, and why it waits.

It reads the claim, its PV, the pods using it, its events and the driver's capabilities, and asks
the resizer's own decisions, in `sync`'s order: which resizer the driver gets (`__main__.choose_resizer`
and `modify_enabled`, the start-up choice), `controller.look_at` (bound? our volume? this claim's?),
`controller.drops_pre_resize_annotation`, `claims.needs_resize`, then `claims.plan_expansion` (or, with
RecoverVolumeExpansionFailure off, the legacy path's test). What a running resizer keeps in memory is
read from the claim instead: a `ControllerResizeError` condition stands for "the last expansion
failed finally", `ControllerResizeInfeasible` for "in the slow set".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from common import explain
from common.errors import CapabilityError
from common.explain import Report, Session
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS
from common.quantity import QuantityError
from common.standardflags import apply_logging_flags
from sidecars.resizer import claims as c
from sidecars.resizer.cli import PROGRAM, ResizerConfig, build_flagset
from sidecars.resizer.controller import Look, drops_pre_resize_annotation, look_at
from sidecars.resizer.inuse import claims_index, slim_pod
from sidecars.resizer.resizer import Resizer

Obj = dict[str, Any]


async def amain(argv: list[str]) -> int:
    """`explain pvc NAMESPACE/NAME [flags]`: print the explanation."""
    flags, ref = explain.parse(build_flagset(), argv, kind="pvc", ref="NAMESPACE/NAME")
    apply_logging_flags(flags)
    config = ResizerConfig.from_flags(flags)
    namespace, name = explain.split_ref(ref, namespaced=True)
    async with Session.open(PROGRAM, config.standard) as session:
        report = await explain_pvc(session, config, namespace, name)
    sys.stdout.write(report.render())
    return 0


async def explain_pvc(session: Session, config: ResizerConfig, namespace: str, name: str) -> Report:
    """The explanation of claim `namespace/name` (see the module docstring)."""
    driver = session.driver
    report = Report(
        f"PersistentVolumeClaim {namespace}/{name}", f"{PROGRAM} for {driver.name or driver.address}"
    )
    pvc = await session.get(PERSISTENT_VOLUME_CLAIMS, name, namespace=namespace)
    if pvc is None:
        report.decide(f"Nothing to do: PersistentVolumeClaim {namespace}/{name} does not exist.")
        return report
    if not driver.reachable:
        report.decide(driver.unreachable_sentence(PROGRAM))
    else:
        await _explain(report, session, config, pvc)
    _size_facts(report, pvc)
    explain.finalizer_facts(report, pvc)
    explain.event_facts(report, await session.events(pvc))
    return report


async def _explain(report: Report, session: Session, config: ResizerConfig, pvc: Obj) -> None:
    # The start-up choice lives in the entrypoint, which imports this module: import it when needed.
    from sidecars.resizer.__main__ import choose_resizer, modify_enabled

    rt = session.runtime(config.standard)
    try:
        resizer = await choose_resizer(rt)
    except CapabilityError as err:
        report.decide(f"Waiting: csi-resizer does not start with this driver: {err}.")
        return
    if resizer is None:
        if not await modify_enabled(rt, config):
            report.decide(
                "Waiting: csi-resizer does not start with this driver: it supports neither volume expansion "
                "(controller or node EXPAND_VOLUME) nor MODIFY_VOLUME."
            )
        else:
            report.decide(
                "Nothing to resize: the driver cannot expand volumes (csi-resizer only modifies them)."
            )
        return
    how = (
        "ControllerExpandVolume" if resizer.controller_expansion else "node-only expansion (trivial resizer)"
    )
    report.note(f"The driver {resizer.name} expands volumes with {how}.")
    volume = str((pvc.get("spec") or {}).get("volumeName") or "")
    pv = await session.get(PERSISTENT_VOLUMES, volume) if volume else None
    look = look_at(pvc, pv, resizer)
    if look is Look.UNBOUND:
        phase = (pvc.get("status") or {}).get("phase", "Pending")
        report.decide(f"Nothing to do yet: the claim is not bound to a volume (phase {phase}).")
    elif look is Look.PV_MISSING:
        report.decide(f"Waiting: its PersistentVolume {volume} does not exist.")
    elif pv is not None and look is Look.NOT_OURS:
        csi = (pv.get("spec") or {}).get("csi")
        owner = (
            f"driver {csi.get('driver')!r}"
            if isinstance(csi, Mapping)
            else "no CSI driver (an in-tree volume)"
        )
        report.decide(f"Nothing to do: PersistentVolume {volume} belongs to {owner}, not {resizer.name!r}.")
    elif pv is not None and look is Look.OTHER_CLAIM:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        report.decide(
            f"Nothing to do: PersistentVolume {volume} is bound to claim "
            f"{ref.get('namespace', '')}/{ref.get('name', '')} (uid {ref.get('uid', '')}), not to this one."
        )
    elif pv is not None:
        await _sizes(report, session, config, resizer, pvc, pv)


async def _sizes(
    report: Report, session: Session, config: ResizerConfig, resizer: Resizer, pvc: Obj, pv: Obj
) -> None:
    try:
        if drops_pre_resize_annotation(pvc, pv, annotate_fs_resize=config.annotate_fs_resize):
            report.note(f"Would remove {c.ANN_PRE_RESIZE_CAPACITY} from the PV: the claim caught up.")
        needed = c.needs_resize(pvc)
    except QuantityError as err:
        report.decide(f"Waiting: invalid storage size: {err}; nothing happens until the claim changes.")
        return
    spec, capacity = c.request_size(pvc) or "0", c.status_capacity(pvc)
    if not needed:
        report.decide(f"Nothing to do: no resize needed (it requests {spec} and has {capacity}).")
        return
    if not config.recover_volume_expansion_failure:
        if c.cmp(c.pv_capacity(pv), spec) >= 0 and c.has_condition(pvc, c.FS_RESIZE_PENDING):
            _node_turn(report, pv)
        else:
            report.decide(f"Would expand the volume to {spec} ({_call(resizer, pv, spec)}).")
        return
    status = c.resize_status(pvc)
    plan = c.plan_expansion(
        pvc,
        pv,
        final_error=c.has_condition(pvc, c.CONTROLLER_RESIZE_ERROR),
        in_slow_set=status == c.CONTROLLER_RESIZE_INFEASIBLE,
        controller_expansion=resizer.controller_expansion,
    )
    last_error = _condition_message(pvc, c.CONTROLLER_RESIZE_ERROR)
    if plan.action is c.Action.SKIP:
        _node_turn(report, pv)
    elif plan.action is c.Action.DELAY:
        report.decide(
            f"Waiting: expanding to {plan.size} is infeasible ({last_error or status}); csi-resizer tries "
            f"again only every --retry-interval-max ({config.retry_interval_max:g}s) or when the request "
            "changes."
        )
    elif status == c.CONTROLLER_RESIZE_IN_PROGRESS:
        why = f"; the last attempt failed: {last_error}" if last_error else " (in progress, or interrupted)"
        report.decide(f"Retrying with backoff: {_call(resizer, pv, plan.size)} with the same size{why}.")
    else:
        report.decide(
            f"Would expand the volume from {capacity} to {plan.size} ({_call(resizer, pv, plan.size)})."
        )
    if plan.action is c.Action.EXPAND:
        await _in_use(report, session, pvc)


def _call(resizer: Resizer, pv: Mapping[str, Any], size: str) -> str:
    handle = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle", "")
    if resizer.controller_expansion:
        return f"ControllerExpandVolume(volume {handle!r}, {size})"
    return f"record {size} and leave the expansion to kubelet on the node"


def _node_turn(report: Report, pv: Mapping[str, Any]) -> None:
    report.decide(
        f"Waiting for the node: the controller side is done (the PV has {c.pv_capacity(pv)}); kubelet "
        "finishes the file system expansion when a pod uses the volume (start or restart one)."
    )


async def _in_use(report: Report, session: Session, pvc: Mapping[str, Any]) -> None:
    """`--handle-volume-inuse-error`: an offline-only driver's expansion waits until no pod uses the claim."""
    key = c.key_of(pvc)
    namespace = (pvc.get("metadata") or {}).get("namespace", "")
    pods = (await session.kube.list(PODS, namespace=namespace)).get("items") or []
    users = [p["metadata"]["name"] for p in pods if key in claims_index(slim_pod(p))]
    if not users:
        return
    report.note(f"Pods using it: {', '.join(sorted(users))}.")
    if "OFFLINE" in session.driver.plugin and "ONLINE" not in session.driver.plugin:
        report.note(
            "The driver expands only offline: if it answers FailedPrecondition, csi-resizer does not retry "
            "while these pods use the claim."
        )


def _condition_message(pvc: Mapping[str, Any], kind: str) -> str:
    for cond in (pvc.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind and cond.get("status") == "True":
            return str(cond.get("message", ""))
    return ""


def _size_facts(report: Report, pvc: Mapping[str, Any]) -> None:
    parts = [f"requests {c.request_size(pvc)}", f"status capacity {c.status_capacity(pvc)}"]
    if c.allocated_size(pvc) is not None:
        parts.append(f"allocated {c.allocated_size(pvc)}")
    if c.resize_status(pvc):
        parts.append(f"resize status {c.resize_status(pvc)}")
    report.note("Sizes: " + ", ".join(parts) + ".")
    for cond in (pvc.get("status") or {}).get("conditions") or ():
        if cond.get("type") in c.RESIZE_CONDITIONS:
            report.note(f"Condition {cond.get('type')}: {cond.get('message', '')}".rstrip(": "))
