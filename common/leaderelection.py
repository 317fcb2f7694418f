"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's rules.

* A replica takes the Lease when it is missing, expired or already its own; it renews every retry
  period and, if it cannot renew for `renew_deadline`, gives up leadership: the controllers are
  cancelled and the process exits 1 (`LeadershipLost`) so kubelet restarts it, as upstream.
* Expiry is judged from *local monotonic* time since this replica last saw the Lease record change,
  never from the `renewTime` written by another machine (clocks differ).
* On a clean shutdown (SIGTERM) the controllers stop first, then the Lease is released (holder
  emptied) so a successor takes over at once. Upstream does this only behind the
  `ReleaseLeaderElectionOnExit` gate; we always do (the gate is accepted).
* `healthz()` mirrors client-go's `HealthzAdaptor`: 500 only on the leader whose last renewal is
  older than lease duration + 20 s.

Leader election has its own API client (own rate limiter), so busy controllers cannot starve renewal.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.errors import ConfigError, SidecarError
from common.kube.client import ApiError, KubeClient
from common.kube.events import NORMAL, EventRecorder
from common.kube.resources import LEASES
from common.logging import get_logger

log = get_logger(__name__)

HEALTHZ_TOLERANCE = 20.0
JITTER = 1.2


class LeadershipLost(SidecarError):
    """Renewal failed for longer than the renew deadline; the process must exit and restart."""


def sanitize_name(name: str) -> str:
    """csi-lib-utils' rule for lease names: `[^a-zA-Z0-9-]` → `-`, and a trailing `-` gets an `X`."""
    name = re.sub(r"[^a-zA-Z0-9-]", "-", name)
    return name + "X" if name.endswith("-") else name


def default_identity() -> str:
    """The replica's identity: `$POD_NAME` (set per replica by the deployment), else the hostname."""
    return sanitize_name(os.environ.get("POD_NAME") or socket.gethostname())


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class LeaderElectionConfig:
    """How to elect; durations in seconds (flags `--leader-election-*`)."""

    lock_name: str
    """The unsanitized lock name (`external-attacher-leader-<driver>`); the Lease has its sanitized form."""
    namespace: str
    """`--leader-election-namespace`, default the pod's namespace."""
    identity: str = field(default_factory=default_identity)
    """This replica's holder identity."""
    lease_duration: float = 15.0
    """`--leader-election-lease-duration` (15s)."""
    renew_deadline: float = 10.0
    """`--leader-election-renew-deadline` (10s)."""
    retry_period: float = 5.0
    """`--leader-election-retry-period` (5s)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """`--leader-election-labels`: put on the Lease when this replica becomes leader."""

    def __post_init__(self) -> None:
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError(
                "--leader-election-lease-duration must be greater than --leader-election-renew-deadline"
            )
        if self.renew_deadline <= JITTER * self.retry_period:
            raise ConfigError(
                "--leader-election-renew-deadline must be greater than 1.2 x --leader-election-retry-period"
            )

    @property
    def lease_name(self) -> str:
        return sanitize_name(self.lock_name)


def lease_to_record(lease: Mapping[str, Any]) -> dict[str, Any]:
    """The election record in a Lease's spec (client-go `LeaseSpecToLeaderElectionRecord`)."""
    spec = lease.get("spec") or {}
    return {
        "holderIdentity": spec.get("holderIdentity") or "",
        "leaseDurationSeconds": int(spec.get("leaseDurationSeconds") or 0),
        "acquireTime": spec.get("acquireTime"),
        "renewTime": spec.get("renewTime"),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0),
    }


def record_to_lease_spec(record: Mapping[str, Any]) -> dict[str, Any]:
    """The Lease spec for a record (client-go `LeaderElectionRecordToLeaseSpec`)."""
    return {
        "holderIdentity": record["holderIdentity"],
        "leaseDurationSeconds": record["leaseDurationSeconds"],
        "acquireTime": record["acquireTime"],
        "renewTime": record["renewTime"],
        "leaseTransitions": record["leaseTransitions"],
    }


class LeaderElector:
    """Runs `lead()` only while this replica holds the Lease (see the module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        config: LeaderElectionConfig,
        *,
        recorder: EventRecorder | None = None,
        report_status: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.recorder = recorder
        self.report_status = report_status or (lambda _leading: None)
        self.leading = False
        self._lease: dict[str, Any] | None = None
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Acquire, run `lead` while renewing; release on cancellation; raise `LeadershipLost`."""
        name, identity = self.config.lease_name, self.config.identity
        log.info(
            "attempting to acquire leader lease", lease=f"{self.config.namespace}/{name}", identity=identity
        )
        while not await self._try_acquire_or_renew():
            await asyncio.sleep(self.config.retry_period * (1 + random.random() * (JITTER - 1)))
        self._became_leader()
        try:
            async with asyncio.TaskGroup() as group:
                work = group.create_task(self._lead(lead), name=f"leader {name}")
                group.create_task(self._renew_until_lost(work), name=f"lease renewal {name}")
        except* LeadershipLost as lost:
            raise lost.exceptions[0] from None
        finally:
            self._set_leading(leading=False)
            await asyncio.shield(self._release())

    async def _lead(self, lead: Callable[[], Awaitable[None]]) -> None:
        await lead()

    async def _renew_until_lost(self, work: asyncio.Task[None]) -> None:
        while not work.done():
            await asyncio.sleep(self.config.retry_period)
            if not await self._renew_within_deadline():
                log.error("stopped leading", lease=self.config.lease_name, identity=self.config.identity)
                work.cancel(msg="leader election lost")
                raise LeadershipLost(
                    f"lost the leader lease {self.config.namespace}/{self.config.lease_name}"
                )

    async def _renew_within_deadline(self) -> bool:
        try:
            async with asyncio.timeout(self.config.renew_deadline):
                while not await self._try_acquire_or_renew():
                    await asyncio.sleep(self.config.retry_period)
                return True
        except TimeoutError:
            return False

    async def _try_acquire_or_renew(self) -> bool:
        config = self.config
        now = datetime.now(UTC)
        record = {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": int(config.lease_duration),
            "acquireTime": _micro_time(now),
            "renewTime": _micro_time(now),
            "leaseTransitions": 0,
        }
        try:
            lease = await self.client.get(LEASES, config.lease_name, namespace=config.namespace)
        except ApiError as exc:
            if not exc.not_found:
                log.info("error retrieving lease", lease=config.lease_name, error=str(exc), v=2)
                return False
            return await self._create(record)
        old = lease_to_record(lease)
        if old != self._observed:
            self._observed, self._observed_at = old, self._now()
        holder = old["holderIdentity"]
        if (
            holder
            and holder != config.identity
            and self._observed_at + old["leaseDurationSeconds"] > self._now()
        ):
            return False
        if holder == config.identity:
            record["acquireTime"] = old["acquireTime"] or record["acquireTime"]
            record["leaseTransitions"] = old["leaseTransitions"]
        else:
            record["leaseTransitions"] = old["leaseTransitions"] + 1
        lease = dict(lease)
        lease["spec"] = record_to_lease_spec(record)
        if not self.leading and config.labels:
            meta = dict(lease.get("metadata") or {})
            meta["labels"] = {**(meta.get("labels") or {}), **config.labels}
            lease["metadata"] = meta
        try:
            self._lease = await self.client.update(LEASES, lease)
        except ApiError as exc:
            log.info("failed to update lease", lease=config.lease_name, error=str(exc), v=2)
            return False
        self._observed, self._observed_at = record, self._now()
        return True

    async def _create(self, record: dict[str, Any]) -> bool:
        metadata: dict[str, Any] = {"name": self.config.lease_name, "namespace": self.config.namespace}
        if self.config.labels:
            metadata["labels"] = dict(self.config.labels)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
        body["spec"] = record_to_lease_spec(record)
        try:
            self._lease = await self.client.create(LEASES, body)
        except ApiError as exc:
            log.info("failed to create lease", lease=self.config.lease_name, error=str(exc), v=2)
            return False
        self._observed, self._observed_at = record, self._now()
        return True

    def _became_leader(self) -> None:
        self._set_leading(leading=True)
        log.info("successfully acquired lease", lease=self.config.lease_name, identity=self.config.identity)
        if self.recorder is not None and self._lease is not None:
            self.recorder.event(
                self._lease, NORMAL, "LeaderElection", f"{self.config.identity} became leader"
            )

    def _set_leading(self, *, leading: bool) -> None:
        self.leading = leading
        self.report_status(leading)

    async def _release(self) -> None:
        """Empty the holder so a successor need not wait for the lease to expire."""
        if self._lease is None or (self._observed or {}).get("holderIdentity") != self.config.identity:
            return
        now = _micro_time(datetime.now(UTC))
        lease = dict(self._lease)
        lease["spec"] = {
            **(lease.get("spec") or {}),
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
        }
        try:
            async with asyncio.timeout(self.config.renew_deadline):
                await self.client.update(LEASES, lease)
            log.info("released leader lease", lease=self.config.lease_name, identity=self.config.identity)
        except (ApiError, TimeoutError) as exc:
            log.info("could not release lease", lease=self.config.lease_name, error=str(exc))
        self._lease = None

    async def healthz(self) -> tuple[int, str]:
        """client-go HealthzAdaptor with a 20 s tolerance: only a leader that stopped renewing fails."""
        if self.leading and self._now() - self._observed_at > self.config.lease_duration + HEALTHZ_TOLERANCE:
            return 500, (
                "internal server error: failed election to renew leadership on lease "
                + self.config.lease_name
            )
        return 200, "ok"
