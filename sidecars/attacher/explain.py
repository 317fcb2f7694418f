"""`csi-attacher explain va NAME`: what the attacher would do with one VolumeAttachment now, and why it waits.

It reads the VolumeAttachment, its PV (or inline spec), the node's CSINode and Node, the publish
secret and the driver's capabilities, and walks the CSI handler's own decisions in the handler's
order: whose VA it is (`request.is_for`), which handler the driver gets (`handler.discover`), then
for an attach `check_source` → `attachable_pv` → `attach_request` (CSI source, access modes) → the
secret → `attach_node_id`; for a detach our finalizer → the PV → `detach_node_id`. The first check
that fails is what the attacher is stuck on (it records it in `status.attachError`/`detachError`
and retries with backoff); if none fails, the report says which CSI call it would make.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from common import explain
from common.explain import Report, Session
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, SECRETS, VOLUME_ATTACHMENTS
from common.standardflags import apply_logging_flags
from sidecars.attacher.cli import PROGRAM, AttacherConfig, build_flagset
from sidecars.attacher.handler import Capabilities, discover
from sidecars.attacher.request import (
    VolumeError,
    attach_node_id,
    attach_request,
    attachable_pv,
    check_source,
    csi_source,
    csinode_error,
    detach_node_id,
    finalizer_name,
    inline_spec_of,
    is_for,
    node_id_from_node,
    publish_of,
    pv_name_of,
)
from sidecars.attacher.status import has_finalizer, is_attached, is_deleting

Obj = dict[str, Any]

RETRIES = (
    "csi-attacher records the error in status.{field} and retries with backoff (up to --retry-interval-max)"
)


async def amain(argv: list[str]) -> int:
    """`explain va NAME [flags]`: print the explanation."""
    flags, ref = explain.parse(build_flagset(), argv, kind="va", ref="NAME")
    apply_logging_flags(flags)
    config = AttacherConfig.from_flags(flags)
    _, name = explain.split_ref(ref, namespaced=False)
    async with Session.open(PROGRAM, config.standard) as session:
        report = await explain_va(session, config, name)
    sys.stdout.write(report.render())
    return 0


async def explain_va(session: Session, config: AttacherConfig, name: str) -> Report:
    """The explanation of VolumeAttachment `name` (see the module docstring)."""
    driver = session.driver
    report = Report(f"VolumeAttachment {name}", f"{PROGRAM} for {driver.name or driver.address}")
    va = await session.get(VOLUME_ATTACHMENTS, name)
    if va is None:
        report.decide(f"Nothing to do: VolumeAttachment {name} does not exist.")
        return report
    if not driver.reachable or session.csi is None:
        report.decide(driver.unreachable_sentence(PROGRAM))
    elif not is_for(va, driver.name):
        attacher = (va.get("spec") or {}).get("attacher", "")
        report.decide(
            f"Nothing to do: it is for attacher {attacher!r}, not {driver.name!r}; this csi-attacher "
            "ignores it (the csi-attacher of that driver handles it)."
        )
    else:
        capabilities = await discover(session.csi)
        if capabilities is None:
            _trivial(report, va)
        elif is_deleting(va):
            await _detach(report, session, va, capabilities)
        else:
            await _attach(report, session, va, capabilities, config)
    _status_facts(report, va)
    explain.finalizer_facts(report, va)
    explain.event_facts(report, await session.events(va))
    return report


def _trivial(report: Report, va: Mapping[str, Any]) -> None:
    why = (
        "the driver lacks the controller service or PUBLISH_UNPUBLISH_VOLUME, so csi-attacher never calls it"
    )
    if is_attached(va):
        report.decide(f"Nothing to do: it is attached ({why}).")
    else:
        report.decide(f"Would mark it attached at once ({why}).")


async def _attach(
    report: Report, session: Session, va: Obj, caps: Capabilities, config: AttacherConfig
) -> None:
    driver = session.driver.name
    if is_attached(va):
        report.decide(
            "Nothing to do: it is attached (status.attached is true); csi-attacher looks again only when the "
            "ListVolumes reconciler finds the driver disagrees."
        )
        return
    node_name = str((va.get("spec") or {}).get("nodeName", ""))
    try:
        check_source(va)
        pv_name = pv_name_of(va)
        pv = None
        if pv_name is not None:
            pv = attachable_pv(pv_name, await session.get(PERSISTENT_VOLUMES, pv_name))
            _pv_fact(report, pv, finalizer_name(driver))
        publish, _ = attach_request(
            va,
            pv,
            publish_readonly=caps.publish_readonly,
            single_node_multi_writer=caps.single_node_multi_writer,
            default_fstype=config.default_fstype,
        )
        await _check_secret(session, publish.secret_ref)
        csinode = await session.get(CSI_NODES, node_name)
        try:
            node_id = attach_node_id(node_name, driver, csinode=csinode)
        except VolumeError:
            node_id = attach_node_id(
                node_name, driver, csinode=csinode, node=await session.get(NODES, node_name)
            )
    except VolumeError as err:
        report.decide(f"Waiting: the attach cannot start: {err}. {RETRIES.format(field='attachError')}.")
        await _hint(report, session, err, node_name)
        return
    call = f"ControllerPublishVolume(volume {publish.volume_id!r}, node ID {node_id!r}"
    call += ", read-only)" if publish.readonly else ")"
    error = ((va.get("status") or {}).get("attachError") or {}).get("message")
    if error:
        report.decide(f"Retrying with backoff: would call {call} again; the last attempt failed: {error}")
    else:
        report.decide(f"Would attach: {call}, after adding finalizer {finalizer_name(driver)}.")


async def _detach(report: Report, session: Session, va: Obj, caps: Capabilities) -> None:
    driver = session.driver.name
    finalizer = finalizer_name(driver)
    if not has_finalizer(va, finalizer):
        report.decide(f"Nothing to do: it is detached (finalizer {finalizer} is gone).")
        return
    node_name = str((va.get("spec") or {}).get("nodeName", ""))
    try:
        check_source(va)
        pv_name = pv_name_of(va)
        if pv_name is not None:
            pv = await session.get(PERSISTENT_VOLUMES, pv_name)
            if pv is None:
                report.decide(
                    f"Would release it: PersistentVolume {pv_name} is gone, so there is no volume to "
                    f"unpublish; csi-attacher removes finalizer {finalizer}."
                )
                return
            source = csi_source(pv.get("spec") or {})
        else:
            source = (inline_spec_of(va) or {})["csi"]
        publish = publish_of(source, publish_readonly=caps.publish_readonly)
        await _check_secret(session, publish.secret_ref)
        csinode = await session.get(CSI_NODES, node_name)
        node_id = detach_node_id(va, driver, csinode=csinode)
        if node_id is None:
            node = await session.get(NODES, node_name)
            node_id = node_id_from_node(node, driver) if node is not None else None
        if node_id is None:
            raise csinode_error(csinode, node_name, driver)
    except VolumeError as err:
        report.decide(f"Waiting: the detach cannot start: {err}. {RETRIES.format(field='detachError')}.")
        return
    call = f"ControllerUnpublishVolume(volume {publish.volume_id!r}, node ID {node_id!r})"
    error = ((va.get("status") or {}).get("detachError") or {}).get("message")
    if error:
        report.decide(f"Retrying with backoff: would call {call} again; the last attempt failed: {error}")
    else:
        report.decide(f"Would detach: {call}, then remove finalizer {finalizer}.")


async def _check_secret(session: Session, ref: Mapping[str, str] | None) -> None:
    """The handler's secret read: VolumeError with its text when the secret cannot be read."""
    if ref is None:
        return
    if await session.get(SECRETS, ref["name"], namespace=ref["namespace"]) is None:
        raise VolumeError(
            f'failed to load secret "{ref["namespace"]}/{ref["name"]}": secrets "{ref["name"]}" not found'
        )


async def _hint(report: Report, session: Session, err: VolumeError, node_name: str) -> None:
    """What to look at for the common stuck states."""
    text = str(err)
    if "csinode" in text.lower():
        if await session.get(NODES, node_name) is None:
            report.note(f"Node {node_name} does not exist: a VolumeAttachment for it cannot be attached.")
        else:
            report.note(
                f"The driver is not registered on node {node_name}: is csi-node-driver-registrar running "
                "there, and did kubelet accept the registration?"
            )
    elif "persistentvolume" in text.lower() and "not found" in text:
        report.note("csi-attacher tries again as soon as the PersistentVolume appears.")


def _pv_fact(report: Report, pv: Mapping[str, Any], finalizer: str) -> None:
    name = (pv.get("metadata") or {}).get("name", "")
    if has_finalizer(pv, finalizer):
        report.note(f"PersistentVolume {name} carries {finalizer} until no VolumeAttachment uses it.")
    else:
        report.note(f"PersistentVolume {name} gets finalizer {finalizer} first.")


def _status_facts(report: Report, va: Mapping[str, Any]) -> None:
    status = va.get("status") or {}
    spec = va.get("spec") or {}
    attached = "true" if status.get("attached") else "false"
    report.note(f"It asks to attach to node {spec.get('nodeName', '')!r}; status.attached is {attached}.")
    for field in ("attachError", "detachError"):
        error = status.get(field)
        if error:
            when = explain.ago(str(error.get("time", "")))
            report.note(f"status.{field} ({when or error.get('time', '')}): {error.get('message', '')}")
