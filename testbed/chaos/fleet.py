"""The fleet: the sidecar processes of a soak, how they are started, and who exits when.

Two replicas of each controller sidecar (provisioner, attacher, resizer), told apart by `$POD_NAME`
(their leader-election identity: `csi-provisioner-0`, `csi-provisioner-1`, ...), plus one
node-driver-registrar and one livenessprobe. Each runs csi-driver-host-path's container args with the
socket paths adapted and these soak settings (the `make chaos` documentation lists them too):

    --leader-election --leader-election-namespace=default
    --leader-election-lease-duration=4s --leader-election-renew-deadline=3s
    --leader-election-retry-period=1s       a killed leader is replaced within ~5 s, not ~20 s
    --timeout=2s                            a hanging CSI call is abandoned after 2 s
    --retry-interval-start=500ms --retry-interval-max=5s   failures are retried within the run
    --kube-api-qps=50 --kube-api-burst=100  the churn, not the client rate limit, sets the pace

The schedule kills and stops processes through `kill`/`terminate`, which mark the exit as expected
and start the process again after a pause (as kubelet restarts a container). `supervise` notices
every other exit — a process that ended on its own — records it as unexpected (the crash-loop
invariant) and restarts it with kubelet's doubling back-off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.chaos.schedule import COMPONENTS
from testbed.demo import free_port, hostpath_args
from testbed.launch import Cluster, Process

LEASE_DURATION = 4.0
RENEW_DEADLINE = 3.0
RETRY_PERIOD = 1.0
CSI_TIMEOUT = 2.0
NAMESPACE = "default"
LEASES = {
    "provisioner": "hostpath-csi-k8s-io",
    "attacher": "external-attacher-leader-hostpath-csi-k8s-io",
    "resizer": "external-resizer-hostpath-csi-k8s-io",
}
REPLICAS = 2
SOAK_FLAGS = [
    "--leader-election",
    f"--leader-election-namespace={NAMESPACE}",
    f"--leader-election-lease-duration={LEASE_DURATION:g}s",
    f"--leader-election-renew-deadline={RENEW_DEADLINE:g}s",
    f"--leader-election-retry-period={RETRY_PERIOD:g}s",
    f"--timeout={CSI_TIMEOUT:g}s",
    "--retry-interval-start=500ms",
    "--retry-interval-max=5s",
    "--kube-api-qps=50",
    "--kube-api-burst=100",
]
BACKOFF_START = 1.0
BACKOFF_MAX = 10.0


def replica_names(component: str) -> list[str]:
    return [f"csi-{component}-{i}" for i in range(REPLICAS)]


@dataclass
class Exit:
    """A process that ended."""

    name: str
    code: int | None
    at: float
    """Wall-clock time (seconds since the epoch) it was noticed."""
    expected: bool
    """True when the schedule killed or stopped it."""
    signal: str = ""
    """SIGKILL or SIGTERM when the schedule sent one."""
    final: bool = False
    """The orderly stop at the end of the soak."""
    last_lines: str = ""


@dataclass
class Fleet:
    """The soak's sidecars on `cluster` (see the module docstring)."""

    cluster: Cluster
    verbosity: int
    say: Callable[[str], None] = print
    exits: list[Exit] = field(default_factory=list)
    http_ports: dict[str, int] = field(default_factory=dict)
    _expected: set[str] = field(default_factory=set)
    """Processes that are down on purpose: killed or stopped and waiting for their restart."""
    _final: set[str] = field(default_factory=set)
    _backoff: dict[str, float] = field(default_factory=dict)

    def _args(self) -> dict[str, list[str]]:
        cluster = self.cluster
        base = hostpath_args(cluster.socket)
        verbosity = f"--v={self.verbosity}"
        args: dict[str, list[str]] = {}
        for module, container_args in base.items():
            kept = [a for a in container_args if not a.startswith(("-v=", "--v=", "--health-port="))]
            args[module] = [*kept, verbosity]
        args["registrar"] += [f"--plugin-registration-path={cluster.registration_dir}"]
        for component in COMPONENTS:
            args[component] += [f"--kubeconfig={cluster.kubeconfig}", *SOAK_FLAGS]
        return args

    def start(self) -> None:
        """Start every sidecar process."""
        args = self._args()
        for component in COMPONENTS:
            for name in replica_names(component):
                port = free_port()
                self.http_ports[name] = port
                self.cluster.sidecar(
                    name,
                    component,
                    [*args[component], f"--http-endpoint=127.0.0.1:{port}"],
                    env={"POD_NAME": name, "NAMESPACE": NAMESPACE},
                )
        port = free_port()
        self.http_ports["csi-registrar"] = port
        self.cluster.sidecar(
            "csi-registrar", "registrar", [*args["registrar"], f"--http-endpoint=127.0.0.1:{port}"]
        )
        port = free_port()
        self.http_ports["csi-livenessprobe"] = port
        self.cluster.sidecar(
            "csi-livenessprobe", "livenessprobe", [*args["livenessprobe"], f"--health-port={port}"]
        )

    @property
    def names(self) -> list[str]:
        return [n for n in self.cluster.processes if n.startswith("csi-") and n != "csi-driver"]

    def process(self, name: str) -> Process:
        return self.cluster.processes[name]

    def alive(self, name: str) -> bool:
        proc = self.cluster.processes.get(name)
        return proc is not None and proc.running()

    def restarts(self) -> dict[str, int]:
        return {name: self.process(name).starts - 1 for name in self.names}

    async def kill(self, name: str, *, restart_after: float) -> int | None:
        """SIGKILL `name`, then start it again after `restart_after` seconds (in the background)."""
        self._expected.add(name)
        code = await self.process(name).kill()
        self.exits.append(Exit(name, code, time.time(), expected=True, signal="SIGKILL"))
        asyncio.get_running_loop().call_later(restart_after, self._restart, name)
        return code

    async def terminate(self, name: str, *, restart_after: float) -> int | None:
        """SIGTERM `name` and wait for it to exit (bounded), then start it again after `restart_after`."""
        self._expected.add(name)
        code = await self.process(name).stop(timeout=20)
        self.exits.append(Exit(name, code, time.time(), expected=True, signal="SIGTERM"))
        asyncio.get_running_loop().call_later(restart_after, self._restart, name)
        return code

    async def restarted(self, *, timeout: float) -> None:
        """Wait (bounded) until every process the schedule took down was started again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._expected - self._final and loop.time() < deadline:
            await asyncio.sleep(0.1)

    async def terminate_for_good(self, name: str) -> int | None:
        """SIGTERM `name` at the end of the soak (no restart); a non-zero exit is still recorded."""
        self._final.add(name)
        self._expected.add(name)
        code = await self.process(name).stop(timeout=20)
        self.exits.append(Exit(name, code, time.time(), expected=True, signal="SIGTERM", final=True))
        return code

    def _restart(self, name: str) -> None:
        proc = self.process(name)
        if not proc.running() and name not in self._final:
            proc.start()
        self._expected.discard(name)

    async def supervise(self, *, interval: float = 0.25) -> None:
        """Forever: record and restart (with back-off) every process that exited on its own."""
        while True:
            await asyncio.sleep(interval)
            for name in self.names:
                proc = self.process(name)
                if proc.running() or name in self._expected:
                    continue
                code = await proc.stop()  # already ended: only closes its log
                exit_ = Exit(name, code, time.time(), expected=False, last_lines=proc.tail(8))
                self.exits.append(exit_)
                delay = self._backoff.get(name, BACKOFF_START)
                self._backoff[name] = min(delay * 2, BACKOFF_MAX)
                self.say(
                    f"UNEXPECTED EXIT {name} (code {code}); restarting in {delay:.0f}s\n{exit_.last_lines}"
                )
                self._expected.add(name)
                asyncio.get_running_loop().call_later(delay, self._restart, name)

    def unexpected(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]
