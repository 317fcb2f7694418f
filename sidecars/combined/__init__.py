"""csi-controller-sidecars: the provisioner, attacher and resizer controllers in one asyncio process.

No Go sidecar has this. One process replaces the three controller containers of a CSI driver's
Deployment: one API client and rate limiter (`--kube-api-qps/-burst` are the process's), one
informer per resource, one gRPC channel to the driver, one metrics endpoint; and one leader election
per controller under the Lease names the single sidecars use, so it can replace them one at a time
and coexist with them during a rollout (a controller whose Lease another pod holds stays standby).

What differs from three containers, on purpose:

* Metrics come from one registry. The work queues keep their names (`claims`, `volumes`,
  `unsavedpvs`; `csi-attacher-va`, `csi-attacher-pv`; `<driver>-pvc`), and
  `leader_election_master_status` has one series per Lease, labelled `name="<lease name>"` (a single
  sidecar's series is `name=""`). `/healthz/leader-election` fails when any Lease's renewal is stale.
* A lost Lease ends the process (exit 1) as it ends a single sidecar, so the other two controllers
  restart with it; a standby controller's Lease can be taken over without a restart.
* The informers are shared: a standby controller's handlers already see the events of informers a
  leading one started; they only queue keys, which its workers take once it leads.

Modules: `cli` (the union of the three command lines and the rules for clashing flags),
`controller` (each controller built as a group on a view of the shared runtime), `__main__` (wiring).
"""
