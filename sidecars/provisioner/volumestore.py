"""The volume store: PVs of provisioned volumes are saved, retried until they are — never orphaned.

sig-storage-lib-external-provisioner's `queueStore` (external-provisioner passes
`CreateProvisionedPVLimiter`): `store()` creates the PV once; AlreadyExists counts as saved. On any
other failure the PV is kept in memory and the work queue `unsavedpvs` retries it forever with the
default controller rate limiter (5 ms doubling to 1000 s per PV, 10/s overall). Each save calls
`on_saved` (the claim controller: ProvisioningSucceeded event, provisioning intent cleared).

If the process dies with PVs still unsaved, the provisioning intent on their claims
(sidecars.provisioner.intent) makes the next process provision them again under the same name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from common.backoff import default_controller_limiter
from common.controller import run_workers
from common.kube.client import ApiError, KubeClient
from common.kube.resources import PERSISTENT_VOLUMES
from common.logging import get_logger
from common.metrics import QueueMetrics
from common.workqueue import WorkQueue

log = get_logger(__name__)

Obj = dict[str, Any]
OnSaved = Callable[[Obj], Awaitable[None]]
SAVE_WORKERS = 4
"""The library's DefaultThreadiness for the save queue."""


class VolumeStore:
    """Saves PVs to the API server, retrying in the background (see the module docstring)."""

    name = "unsavedpvs"

    def __init__(
        self, *, kube: KubeClient, on_saved: OnSaved, queue_metrics: QueueMetrics | None = None
    ) -> None:
        self.kube = kube
        self.on_saved = on_saved
        self._unsaved: dict[str, Obj] = {}
        self.queue: WorkQueue[str] = WorkQueue(
            self.name, limiter=default_controller_limiter(0.005, 1000.0), metrics=queue_metrics
        )

    def pending(self, name: str) -> bool:
        """A PV of this name waits to be saved."""
        return name in self._unsaved

    async def store(self, pv: Obj) -> bool:
        """Save `pv` now, or queue it for retries; True when it is saved."""
        name = pv["metadata"]["name"]
        try:
            await self._create(pv)
        except ApiError as err:
            log.error("failed to save volume, will retry", pv=name, error=str(err))
            self._unsaved[name] = pv
            self.queue.add(name)
            return False
        await self.on_saved(pv)
        return True

    async def _create(self, pv: Obj) -> None:
        name = pv["metadata"]["name"]
        log.info("saving volume", pv=name, v=5)
        try:
            await self.kube.create(PERSISTENT_VOLUMES, pv)
        except ApiError as err:
            if not err.already_exists:
                raise ApiError(
                    err.status, err.reason, f"error saving volume {name}: {err}", err.body
                ) from err
            log.info("persistentvolume already exists, reusing", pv=name, v=2)
        log.info("volume saved", pv=name, v=5)

    async def _save(self, name: str) -> None:
        pv = self._unsaved.get(name)
        if pv is None:
            return
        await self._create(pv)
        self._unsaved.pop(name, None)
        await self.on_saved(pv)

    async def run(self) -> None:
        """Retry unsaved PVs until cancelled."""
        await run_workers(self.queue, self._save, name=self.name, count=SAVE_WORKERS)
