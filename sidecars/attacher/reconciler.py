"""The VolumeAttachment reconciler: the driver's ListVolumes against what the VAs say, every --reconcile-sync.

external-attacher's `ReconcileVA`, run only when the driver has LIST_VOLUMES and
LIST_VOLUMES_PUBLISHED_NODES: ListVolumes (paginated by `--max-entries`, the whole listing within
`--timeout`) gives volume_id → published node IDs; every VA of this driver whose `status.attached`
disagrees with "its node ID is among the published ones" is queued with a forced sync, which re-runs
the attach (or the detach) even though the status looks final. VAs whose node ID, PV or volume
handle cannot be found are skipped, as upstream does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from common.csi import describe
from common.logging import get_logger
from proto import csi_pb2
from sidecars.attacher.request import VolumeError, check_source, csi_source, inline_spec_of, meta, pv_name_of
from sidecars.attacher.status import is_attached

log = get_logger(__name__)

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A VA whose status disagrees with the driver: `published` is what the driver says."""

    name: str
    volume_id: str
    node_id: str
    published: bool


async def list_published(controller: Any, *, max_entries: int, timeout: float) -> dict[str, list[str]]:
    """CSIVolumeLister.ListVolumes: volume_id → published_node_ids over every page, within `timeout`."""
    published: dict[str, list[str]] = {}
    token = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                request = csi_pb2.ListVolumesRequest(starting_token=token, max_entries=max_entries)
                response = await controller.ListVolumes(request, timeout=max(deadline - loop.time(), 0.001))
                for entry in response.entries:
                    published[entry.volume.volume_id] = list(entry.status.published_node_ids)
                token = response.next_token
                if not token:
                    return published
    except grpc.RpcError as err:
        raise VolumeError(f"failed to ListVolumes: failed to list volumes: {describe(err)}") from err
    except TimeoutError as err:
        raise VolumeError("failed to ListVolumes: context deadline exceeded") from err


def volume_id_of(va: Mapping[str, Any], pvs: Callable[[str], Object | None]) -> str | None:
    """The volume handle a VA attaches (from its PV in the cache, or its inline spec); None if unknown."""
    try:
        check_source(va)
        pv_name = pv_name_of(va)
        if pv_name is not None:
            pv = pvs(pv_name)
            if pv is None:
                return None
            source = csi_source(pv.get("spec") or {})
        else:
            source = (inline_spec_of(va) or {})["csi"]
    except VolumeError:
        return None
    handle = source.get("volumeHandle")
    return str(handle) if handle else None


def mismatches(
    vas: Iterable[Object],
    published: Mapping[str, list[str]],
    *,
    driver: str,
    node_id: Callable[[Object], str | None],
    pvs: Callable[[str], Object | None],
) -> list[Mismatch]:
    """The VAs of `driver` whose `status.attached` differs from the driver's published node IDs."""
    found: list[Mismatch] = []
    for va in vas:
        if (va.get("spec") or {}).get("attacher") != driver:
            continue
        name = str(meta(va).get("name", ""))
        node = node_id(va)
        if node is None:
            log.info("reconcile: no node ID for VolumeAttachment, skipping", va=name, v=4)
            continue
        volume_id = volume_id_of(va, pvs)
        if volume_id is None:
            log.info("reconcile: no volume handle for VolumeAttachment, skipping", va=name, v=4)
            continue
        is_published = node in published.get(volume_id, ())
        if is_attached(va) != is_published:
            found.append(Mismatch(name=name, volume_id=volume_id, node_id=node, published=is_published))
    return found
