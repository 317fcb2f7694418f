"""csi-controller-sidecars: the provisioner, attacher and resizer controllers in one asyncio process.

No Go sidecar has this. One process replaces the three controller containers of a CSI driver's
Deployment: one API client and rate limiter, one informer per resource, one gRPC channel to the
driver, one metrics endpoint; and one leader election per controller under the Lease names the single
sidecars use, so it can replace them one at a time and coexist with them during a rollout.

Modules: `cli` (the union of the three command lines and the rules for clashing flags),
`controller` (each controller built as a group on a view of the shared runtime), `__main__` (wiring).
"""
