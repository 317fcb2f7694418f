"""The controller-sidecar runtime: what provisioner, attacher and resizer share from start to stop.

Start (csi-lib-utils order): metrics → connect to the driver (30 s, then exit 1) → Probe until
ready → GetPluginInfo (the driver name) → Kubernetes client with `--kube-api-qps/-burst`, and a
separate one for leader election → the HTTP endpoint.

`run()` then owns every long-lived task in one TaskGroup: the HTTP endpoint, the CSI connection
watch (reconnects), the event recorders, and — only while this replica leads, as upstream starts
informers inside the leader callback — the informers and the controllers.

Several controller groups (a combined process, `sidecars.combined`, which builds each group on a view of
the runtime with that sidecar's standard config and records the shared informers it uses):
`run_groups()` runs one leader election per group (its own Lease, `leader_election_master_status`
labelled with the lease name) and, while a group leads, its controllers. An informer starts when the
first group using it leads and runs until the process stops: a lost Lease ends the process (exit 1) as
in a single sidecar, so there is no "stopped leading, keep serving" state to undo. A standby group's
handlers already see the events of informers another group started; they only queue keys, which its
workers take once it leads.

Stop (SIGTERM cancels the main task), in stages:
  1. informers stop (no new keys),
  2. each controller's queue drains in-flight keys for a bounded time, then its workers are cancelled,
  3. the Lease is released (holder emptied) so a standby takes over at once,
  4. queued events are flushed, the gRPC channel closed, the HTTP endpoint cleaned up.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.backoff import TokenBucket
from common.csi import CSIConnection
from common.flags import Flags
from common.http import HttpEndpoint
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config, pod_namespace
from common.kube.events import EventRecorder
from common.kube.informer import Informer, InformerFactory
from common.leaderelection import LeaderElectionConfig, LeaderElector, sanitize_name
from common.logging import get_logger
from common.metrics import Metrics
from common.once import OncePass, describe_uids
from common.standardflags import check_http_flags, version

log = get_logger(__name__)

CSI_CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True, kw_only=True)
class StandardConfig:
    """csi-lib-utils' standard flags (REFERENCE §0.2), shared by provisioner, attacher and resizer."""

    csi_address: str = "/run/csi/socket"
    """`--csi-address`: the driver's socket (`/path`, `unix:///path`, or `host:port` for debugging)."""
    kubeconfig: str = ""
    """`--kubeconfig`: empty means the in-cluster service account."""
    master: str = ""
    """`--master` (provisioner and resizer): overrides the API server URL."""
    timeout: float = 10.0
    """`--timeout`, seconds: the deadline of each CSI call."""
    leader_election: bool = False
    """`--leader-election`."""
    leader_election_namespace: str = ""
    """`--leader-election-namespace`: empty means the pod's namespace."""
    lease_duration: float = 15.0
    """`--leader-election-lease-duration`, seconds (15s)."""
    renew_deadline: float = 10.0
    """`--leader-election-renew-deadline`, seconds (10s)."""
    retry_period: float = 5.0
    """`--leader-election-retry-period`, seconds (5s)."""
    leader_election_labels: Mapping[str, str] = field(default_factory=dict)
    """`--leader-election-labels k:v,...`: labels put on the Lease by its leader."""
    kube_api_qps: float = 5.0
    """`--kube-api-qps` (5): the controllers' shared request rate."""
    kube_api_burst: int = 10
    """`--kube-api-burst` (10)."""
    http_endpoint: str = ""
    """`--http-endpoint`: metrics and `/healthz/leader-election`."""
    metrics_address: str = ""
    """`--metrics-address` (deprecated): metrics only."""
    metrics_path: str = "/metrics"
    """`--metrics-path` (/metrics)."""
    debug: bool = False
    """`--debug` (ours, false): no leader election, and `$KUBECONFIG` or ~/.kube/config when no
    `--kubeconfig` is given (common.debug starts an embedded test bed when there is none)."""
    once: bool = False
    """`--once` (ours, false): one reconcile pass without leader election, then exit (common.once)."""

    @classmethod
    def from_flags(cls, flags: Flags) -> StandardConfig:
        check_http_flags(flags)
        debug = flags.defined("debug") and flags.boolean("debug")
        once = flags.defined("once") and flags.boolean("once")
        return cls(
            debug=debug,
            once=once,
            csi_address=flags.string("csi-address"),
            kubeconfig=flags.string("kubeconfig"),
            master=flags.string("master") if flags.defined("master") else "",
            timeout=flags.duration("timeout"),
            leader_election=flags.boolean("leader-election") and not (debug or once),
            leader_election_namespace=flags.string("leader-election-namespace"),
            lease_duration=flags.duration("leader-election-lease-duration"),
            renew_deadline=flags.duration("leader-election-renew-deadline"),
            retry_period=flags.duration("leader-election-retry-period"),
            leader_election_labels=flags.string_map("leader-election-labels"),
            kube_api_qps=flags.floating("kube-api-qps"),
            kube_api_burst=flags.integer("kube-api-burst"),
            http_endpoint=flags.string("http-endpoint"),
            metrics_address=flags.string("metrics-address"),
            metrics_path=flags.string("metrics-path"),
        )


class Controller(Protocol):
    """A controller the runtime runs while leading: it made its informers from the factory already."""

    name: str

    async def run(self) -> None:
        """Run workers until cancelled (then drain, see common.controller.run_workers)."""
        ...


def token_bucket(qps: float, burst: int) -> TokenBucket:
    """A limiter for `--kube-api-qps/-burst`; qps <= 0 means unlimited, as client-go treats it."""
    return TokenBucket(qps if qps > 0 else math.inf, max(burst, 1))


async def _first_unhealthy(electors: Iterable[LeaderElector]) -> tuple[int, str]:
    """`/healthz/leader-election` of several leases: the first failing one, else ok."""
    for elector in electors:
        if (found := await elector.healthz())[0] != 200:
            return found
    return 200, "ok"


@dataclass(frozen=True, kw_only=True)
class ControllerGroup:
    """Controllers that lead together under one Lease: one sidecar's worth in a combined process."""

    lock_name: str
    """The unsanitized lock name, as that sidecar alone uses it (`external-attacher-leader-<driver>`)."""
    controllers: Sequence[Controller]
    informers: Sequence[Informer]
    """The shared informers the controllers read: started when the group first leads."""
    config: StandardConfig
    """That sidecar's standard flags: whether and how it elects (lease timings, labels)."""


@dataclass(kw_only=True)
class Runtime:
    """The connections of one controller sidecar process (see the module docstring)."""

    program: str
    config: StandardConfig
    metrics: Metrics
    csi: CSIConnection
    kube: KubeClient
    election_client: KubeClient
    factory: InformerFactory
    driver_name: str
    recorders: list[EventRecorder] = field(default_factory=list)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        program: str,
        config: StandardConfig,
        *,
        use_kubeconfig_env: bool = False,
        resync: float = 0.0,
        metrics: Metrics | None = None,
        max_log_length: int = -1,
    ) -> AsyncIterator[Runtime]:
        """Connect to the driver and the API server; close both on exit.

        `max_log_length` caps the logged gRPC responses (the attacher's `--max-grpc-log-length`; -1: no cap).
        """
        metrics = metrics or Metrics()
        csi = await CSIConnection.connect(
            config.csi_address,
            call_timeout=config.timeout,
            connect_timeout=CSI_CONNECT_TIMEOUT,
            recorder=metrics,
            max_log_length=max_log_length,
        )
        try:
            await csi.probe_forever()
            info = await csi.plugin_info()
            log.info("CSI driver name", driver=info.name, version=info.vendor_version)
            cluster = await load_cluster_config(
                kubeconfig=config.kubeconfig,
                master=config.master,
                use_env=use_kubeconfig_env,
                allow_default_file=config.debug,
            )
            kube = KubeClient(
                cluster,
                limiter=token_bucket(config.kube_api_qps, config.kube_api_burst),
                user_agent=f"{program}/{version()}",
            )
            try:
                yield cls(
                    program=program,
                    config=config,
                    metrics=metrics,
                    csi=csi,
                    kube=kube,
                    election_client=kube.sibling(
                        limiter=token_bucket(config.kube_api_qps, config.kube_api_burst)
                    ),
                    factory=InformerFactory(kube, resync=resync),
                    driver_name=info.name,
                )
            finally:
                await kube.close()
        finally:
            await csi.close()

    def recorder(self, component: str) -> EventRecorder:
        """An event recorder whose queue the runtime writes and flushes."""
        recorder = EventRecorder(self.kube, component=component)
        self.recorders.append(recorder)
        return recorder

    async def run_groups(self, groups: Sequence[ControllerGroup]) -> None:
        """Like `run`, for several groups: one Lease each, shared informers (see the module docstring).

        With `--once`: one reconcile pass of every group's controllers, as `run` does it."""
        if self.config.once:
            await self.run(lock_name="", controllers=[c for group in groups for c in group.controllers])
            return
        electors = {
            group.lock_name: self.elector(
                group.lock_name, config=group.config, status_name=sanitize_name(group.lock_name)
            )
            for group in groups
            if group.config.leader_election
        }
        endpoint = self._endpoint(None)
        if endpoint is not None and electors and self.config.http_endpoint:
            endpoint.add_check("/healthz/leader-election", lambda: _first_unhealthy(electors.values()))
        started: set[int] = set()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._start_process_tasks(tasks, endpoint)
                for group in groups:
                    lead = self._lead_group(tasks, group, started)
                    elector = electors.get(group.lock_name)
                    if elector is None:
                        tasks.create_task(lead(), name=f"controllers {group.lock_name}")
                    else:
                        tasks.create_task(elector.run(lead), name=f"leader-election {group.lock_name}")
        finally:
            await self._flush_events()

    def _lead_group(
        self, tasks: asyncio.TaskGroup, group: ControllerGroup, started: set[int]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """One group's lead callback: its informers not yet running start in `tasks`, the process's task
        group, where they serve every group until the process stops; then its controllers run."""

        async def lead() -> None:
            for informer in group.informers:
                if id(informer) not in started:
                    started.add(id(informer))
                    tasks.create_task(informer.run(), name=f"informer {informer.name}")
                    if informer.resync > 0:
                        tasks.create_task(informer.run_resync(), name=f"resync {informer.name}")
            await asyncio.gather(*(informer.wait_synced() for informer in group.informers))
            names = [c.name for c in group.controllers]
            log.info(
                "caches synced, starting controllers", lease=sanitize_name(group.lock_name), controllers=names
            )
            async with asyncio.TaskGroup() as running:
                for controller in group.controllers:
                    running.create_task(controller.run(), name=f"controller {controller.name}")

        return lead

    def _endpoint(self, elector: LeaderElector | None) -> HttpEndpoint | None:
        config = self.config
        if config.http_endpoint:
            endpoint = HttpEndpoint(
                config.http_endpoint, metrics=self.metrics, metrics_path=config.metrics_path
            )
            if elector is not None:
                endpoint.add_check("/healthz/leader-election", elector.healthz)
            return endpoint
        if config.metrics_address:
            return HttpEndpoint(
                config.metrics_address,
                metrics=self.metrics,
                metrics_path=config.metrics_path,
                flag="metrics-address",
            )
        return None

    def elector(
        self, lock_name: str, *, config: StandardConfig | None = None, status_name: str = ""
    ) -> LeaderElector:
        """An elector for `lock_name` with `config`'s election flags (default: the runtime's);
        `status_name` labels its `leader_election_master_status` series."""
        config = config or self.config
        election_recorder = EventRecorder(self.election_client, component=f"{lock_name}/")
        elector = LeaderElector(
            self.election_client,
            LeaderElectionConfig(
                lock_name=lock_name,
                namespace=config.leader_election_namespace or pod_namespace(),
                lease_duration=config.lease_duration,
                renew_deadline=config.renew_deadline,
                retry_period=config.retry_period,
                labels=config.leader_election_labels,
            ),
            recorder=election_recorder,
            report_status=self.metrics.leader_election(status_name),
        )
        election_recorder.component = f"{lock_name}/{elector.config.identity}"
        self.recorders.append(election_recorder)
        return elector

    async def run(self, *, lock_name: str, controllers: Sequence[Controller]) -> None:
        """Serve until cancelled; controllers and informers only while leading (if election is on).

        With `--once`: one reconcile pass (common.once), then return or raise OnceFailed (exit 1)."""
        if self.config.once:
            await self._run_once(controllers)
            return
        elector = self.elector(lock_name) if self.config.leader_election else None
        endpoint = self._endpoint(elector)
        try:
            async with asyncio.TaskGroup() as group:
                self._start_process_tasks(group, endpoint)
                if elector is not None:
                    group.create_task(elector.run(lambda: self._lead(controllers)), name="leader-election")
                else:
                    group.create_task(self._lead(controllers), name="controllers")
        finally:
            await self._flush_events()

    def _start_process_tasks(self, tasks: asyncio.TaskGroup, endpoint: HttpEndpoint | None) -> None:
        """What serves the whole process beside the controllers: HTTP, the CSI connection watch, events."""
        if endpoint is not None:
            tasks.create_task(endpoint.serve(), name="http")
        tasks.create_task(self.csi.watch_connection(), name="csi connection")
        for recorder in self.recorders:
            tasks.create_task(recorder.run(), name=f"events {recorder.component}")

    async def _flush_events(self) -> None:
        """Every event recorded so far written, even while the process is being cancelled."""
        for recorder in self.recorders:
            await asyncio.shield(recorder.flush())

    async def _lead(self, controllers: Sequence[Controller]) -> None:
        """Informers, then controllers once caches synced; all stop together on cancellation."""
        async with asyncio.TaskGroup() as group:
            self.factory.start(group)
            await self.factory.wait_synced()
            log.info("caches synced, starting controllers", controllers=[c.name for c in controllers])
            for controller in controllers:
                group.create_task(controller.run(), name=f"controller {controller.name}")

    async def _run_once(self, controllers: Sequence[Controller]) -> None:
        """Informers and controllers until every queue is empty and idle, with events written."""
        one_pass = OncePass()
        try:
            with one_pass.active():
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(r.run(), name=f"events {r.component}") for r in self.recorders]
                    lead = group.create_task(self._lead(controllers), name="controllers")
                    idle = group.create_task(one_pass.wait_idle(), name="once: wait until idle")
                    tasks += [lead, idle]
                    await asyncio.wait([lead, idle], return_when=asyncio.FIRST_COMPLETED)
                    for task in tasks:
                        task.cancel(msg="reconcile pass finished")
        finally:
            await self._flush_events()
        stores = {informer.name: informer.store for informer in self.factory.informers}
        one_pass.result().raise_for_failures(describe_uids(stores))
