"""Provisioning states: what one provisioning attempt leaves behind, and the error that carries it.

sig-storage-lib-external-provisioner's `ProvisioningState`:

* FINISHED — success, or a failure after which nothing runs on the storage side; the claim leaves the
  in-progress map (it is still retried with backoff when there was an error).
* IN_BACKGROUND — the storage side may still be creating the volume (a timeout, Unavailable...): the
  claim is kept in memory and CreateVolume is retried with the same name, even if the PVC is deleted.
* NO_CHANGE — a failure before anything was sent (a secret that cannot be read...): keep the previous
  in-progress status.
* RESCHEDULE — the selected node cannot host the volume: remove `volume.kubernetes.io/selected-node`
  so the scheduler picks again.
"""

from __future__ import annotations

from enum import Enum


class ProvisioningState(Enum):
    FINISHED = "Finished"
    IN_BACKGROUND = "InBackground"
    NO_CHANGE = "NoChange"
    RESCHEDULE = "Reschedule"


class ProvisionError(Exception):
    """A provisioning attempt failed; `str(err)` is the ProvisioningFailed event message.

    `infeasible`: CreateVolume said InvalidArgument (retried only every `--retry-interval-max`).
    `stop`: do not retry until the claim changes (upstream `errStopProvision`); the event, if any,
    was already recorded.
    """

    def __init__(
        self,
        message: str,
        state: ProvisioningState,
        *,
        infeasible: bool = False,
        stop: bool = False,
    ) -> None:
        super().__init__(message)
        self.state = state
        self.infeasible = infeasible
        self.stop = stop


class IgnoredClaim(Exception):
    """Not ours to provision after all (upstream `IgnoredError`): stop quietly, no event."""
