"""The chaos soak (`make chaos`): churn plus scheduled faults against the real sidecars, then invariants.

    python -m testbed.chaos --duration 3m --seed 1

starts the test bed as processes with two leader-elected replicas of each controller sidecar, the
registrar and the livenessprobe; creates, mounts, resizes and deletes claims at a steady rate while
killing leaders, stopping standbys, crashing the driver, hanging and losing CSI answers, restarting
the API server, dropping and expiring watches and failing requests; then lets the cluster settle and
checks that nothing was lost. The same seed gives the same schedule.

Modules, one concept each: `schedule` (the seeded plan), `fleet` (the sidecar processes, their soak
flags and who exited), `clients` (the soak's own API client and the test bed's control endpoints),
`churn` (the user's actions and what completed), `records` (what became of a fault), `faults`
(injecting process and CSI faults, evidence of recovery), `apifaults` (the API server's faults),
`observe` (snapshots, Lease holders, the request log), `invariants` (the verdicts), `report`
(printing), `run` (one soak end to end), `__main__` (the command line).
"""
