"""The seeded schedule: which faults and which churn actions a soak performs, and when.

`draw(seed, duration)` is a pure function: the same seed and duration give the same schedule, step
for step (`Schedule.digest()` fingerprints it). Only *when* each step really runs, and what the
cluster made of it, varies between runs.

Churn is drawn from a model of the claims the soak owns, not from the cluster: the schedule cannot
depend on timing. The executor (`testbed.chaos.churn`) defers a step whose precondition the cluster
has not reached yet (a resize or a pod deletion of a claim that is not Bound yet).

Faults come from three families dealt in turn — processes (leader SIGKILL, standby SIGTERM), the
CSI driver (crash, a call hanging past `--timeout`, a call that succeeds but whose answer is lost)
and the API server (restart with state kept, all watches dropped, 410 on the next watches, bursts
of 429, 500 and 409) — each family from its own shuffled deck, so even a short run sees all three
and a three-minute run sees every kind.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

COMPONENTS = ("provisioner", "attacher", "resizer")
"""The controller sidecars run as two leader-elected replicas each."""


class FaultKind(StrEnum):
    """What a fault does; the tally of a run is per kind."""

    LEADER_KILL = "leader-kill"
    """SIGKILL the current leader of a component (restarted after `pause`, as kubelet would)."""
    STANDBY_TERM = "standby-term"
    """SIGTERM a standby replica (restarted after `pause`)."""
    DRIVER_CRASH = "driver-crash"
    """The CSI driver stops serving and comes back `pause` seconds later, volumes kept."""
    CSI_HANG = "csi-hang"
    """The next call of a CSI method never answers: the sidecar's `--timeout` must end it."""
    CSI_LOST_RESPONSE = "csi-lost-response"
    """The next call of a CSI method does its work, then never answers (the answer is lost)."""
    API_RESTART = "api-restart"
    """The API server stops listening for `pause` seconds and comes back with its state."""
    WATCHES_DROPPED = "watches-dropped"
    """Every open watch ends at once."""
    WATCH_EXPIRED = "watch-expired"
    """Every watch is dropped and the next ones answer 410 Gone (the informers must relist)."""
    API_429 = "api-429"
    """The next `count` matching requests get 429 TooManyRequests with Retry-After: 1."""
    API_500 = "api-500"
    """The next `count` matching requests get 500 InternalError."""
    API_409 = "api-409"
    """The next `count` matching writes get 409 Conflict."""


CSI_METHODS = ("CreateVolume", "ControllerPublishVolume", "ControllerExpandVolume")
WRITES = (
    # (verb, resource, subresource): the sidecars' writes, which the churn itself never makes.
    ("create", "persistentvolumes", ""),
    ("patch", "persistentvolumes", ""),
    ("delete", "persistentvolumes", ""),
    ("update", "persistentvolumeclaims", ""),
    ("patch", "persistentvolumeclaims", "status"),
    ("patch", "volumeattachments", ""),
    ("patch", "volumeattachments", "status"),
    ("create", "events", ""),
)
UPDATES = tuple(w for w in WRITES if w[0] in ("update", "patch"))

FAMILIES: dict[str, list[tuple[FaultKind, str]]] = {
    "process": [(FaultKind.LEADER_KILL, c) for c in COMPONENTS for _ in range(2)]
    + [(FaultKind.STANDBY_TERM, c) for c in COMPONENTS],
    "csi": [(FaultKind.DRIVER_CRASH, "driver")]
    + [(FaultKind.CSI_HANG, m) for m in CSI_METHODS]
    + [(FaultKind.CSI_LOST_RESPONSE, m) for m in CSI_METHODS],
    "api": [
        (FaultKind.API_RESTART, "apiserver"),
        (FaultKind.WATCHES_DROPPED, "apiserver"),
        (FaultKind.WATCH_EXPIRED, "apiserver"),
        (FaultKind.API_429, ""),
        (FaultKind.API_500, ""),
        (FaultKind.API_409, ""),
    ],
}


class ChurnAction(StrEnum):
    """What a churn step does to one claim (and its pod)."""

    CREATE_CLAIM = "create-claim"
    """Create the PVC; a WaitForFirstConsumer claim gets its pod at once (else it would never bind)."""
    CREATE_POD = "create-pod"
    """Create a pod on node-1 that mounts the claim."""
    RESIZE = "resize"
    """Raise the claim's storage request to `size_mi`."""
    DELETE_POD = "delete-pod"
    """Delete the claim's pod."""
    DELETE_CLAIM = "delete-claim"
    """Delete the claim's pod (if any), then the claim."""


IMMEDIATE = "Immediate"
WAIT = "WaitForFirstConsumer"


@dataclass(frozen=True)
class FaultStep:
    """One fault: at `at` seconds into the churn, inject `kind` on `target`."""

    at: float
    kind: FaultKind
    target: str
    """A component, a CSI method, "driver", "apiserver", or "verb resource[/subresource]"."""
    count: int = 0
    """API bursts: how many requests fail."""
    pause: float = 0.0
    """Seconds before a killed process is started again, the driver or API server is back."""

    def describe(self) -> str:
        extra = f" x{self.count}" if self.count else ""
        pause = f" pause={self.pause:.1f}s" if self.pause else ""
        return f"{self.kind} {self.target}{extra}{pause}"


@dataclass(frozen=True)
class ChurnStep:
    """One churn action on one claim."""

    at: float
    action: ChurnAction
    claim: str
    binding: str = ""
    """CREATE_CLAIM: the StorageClass's volumeBindingMode."""
    size_mi: int = 0
    """CREATE_CLAIM and RESIZE: the storage request, in MiB."""

    def describe(self) -> str:
        detail = {
            ChurnAction.CREATE_CLAIM: f" {self.binding} {self.size_mi}Mi",
            ChurnAction.RESIZE: f" -> {self.size_mi}Mi",
        }.get(self.action, "")
        return f"{self.action} {self.claim}{detail}"


@dataclass(frozen=True)
class Schedule:
    """Every step of one soak, in time order per list."""

    seed: int
    duration: float
    faults: tuple[FaultStep, ...]
    churn: tuple[ChurnStep, ...]

    def lines(self) -> Iterator[str]:
        steps: list[tuple[float, str]] = [(f.at, f"fault {f.describe()}") for f in self.faults]
        steps += [(c.at, f"churn {c.describe()}") for c in self.churn]
        for at, text in sorted(steps):
            yield f"{at:8.2f} {text}"

    def digest(self) -> str:
        """A short fingerprint: equal for equal schedules."""
        return hashlib.sha256("\n".join(self.lines()).encode()).hexdigest()[:16]


@dataclass
class _Claim:
    binding: str
    size_mi: int
    pod: bool = False


@dataclass
class ChurnModel:
    """The claims as the schedule believes them to be; drives which action is possible."""

    rng: random.Random
    min_live: int = 6
    max_live: int = 16
    claims: dict[str, _Claim] = field(default_factory=dict)
    created: int = 0

    def step(self, at: float) -> ChurnStep:
        live = self.claims
        choices: list[tuple[float, ChurnAction]] = []
        if len(live) < self.max_live:
            choices.append((10.0 if len(live) < self.min_live else 3.0, ChurnAction.CREATE_CLAIM))
        if any(not c.pod for c in live.values()):
            choices.append((2.0, ChurnAction.CREATE_POD))
        if live:
            choices.append((2.0, ChurnAction.RESIZE))
        if any(c.pod for c in live.values()):
            choices.append((1.5, ChurnAction.DELETE_POD))
        if len(live) > self.min_live:
            choices.append((1.5, ChurnAction.DELETE_CLAIM))
        action = self.rng.choices([a for _, a in choices], weights=[w for w, _ in choices])[0]
        make: Callable[[float], ChurnStep] = getattr(self, action.name.lower())
        return make(at)

    def create_claim(self, at: float) -> ChurnStep:
        self.created += 1
        name = f"c-{self.created:04d}"
        binding = self.rng.choice((IMMEDIATE, WAIT))
        size = 32 * self.rng.randint(1, 8)
        self.claims[name] = _Claim(binding, size, pod=binding == WAIT)
        return ChurnStep(at, ChurnAction.CREATE_CLAIM, name, binding=binding, size_mi=size)

    def create_pod(self, at: float) -> ChurnStep:
        name = self.rng.choice(sorted(n for n, c in self.claims.items() if not c.pod))
        self.claims[name].pod = True
        return ChurnStep(at, ChurnAction.CREATE_POD, name)

    def resize(self, at: float) -> ChurnStep:
        with_pod = sorted(n for n, c in self.claims.items() if c.pod)
        pool = with_pod if with_pod and self.rng.random() < 0.8 else sorted(self.claims)
        name = self.rng.choice(pool)
        self.claims[name].size_mi += 32 * self.rng.randint(1, 4)
        return ChurnStep(at, ChurnAction.RESIZE, name, size_mi=self.claims[name].size_mi)

    def delete_pod(self, at: float) -> ChurnStep:
        name = self.rng.choice(sorted(n for n, c in self.claims.items() if c.pod))
        self.claims[name].pod = False
        return ChurnStep(at, ChurnAction.DELETE_POD, name)

    def delete_claim(self, at: float) -> ChurnStep:
        without_pod = sorted(n for n, c in self.claims.items() if not c.pod)
        pool = without_pod if without_pod and self.rng.random() < 0.7 else sorted(self.claims)
        name = self.rng.choice(pool)
        del self.claims[name]
        return ChurnStep(at, ChurnAction.DELETE_CLAIM, name)


def _fault(rng: random.Random, at: float, kind: FaultKind, target: str) -> FaultStep:
    if kind in (FaultKind.API_429, FaultKind.API_500):
        verb, resource, sub = rng.choice(WRITES)
        return FaultStep(at, kind, f"{verb} {resource}{'/' + sub if sub else ''}", count=rng.randint(2, 6))
    if kind is FaultKind.API_409:
        verb, resource, sub = rng.choice(UPDATES)
        return FaultStep(at, kind, f"{verb} {resource}{'/' + sub if sub else ''}", count=rng.randint(1, 4))
    if kind is FaultKind.LEADER_KILL:  # sometimes back before the Lease expires, sometimes long after
        return FaultStep(at, kind, target, pause=round(rng.uniform(0.5, 8.0), 1))
    if kind in (FaultKind.STANDBY_TERM, FaultKind.DRIVER_CRASH):
        return FaultStep(at, kind, target, pause=round(rng.uniform(0.5, 2.0), 1))
    if kind is FaultKind.API_RESTART:
        return FaultStep(at, kind, target, pause=round(rng.uniform(0.2, 1.0), 1))
    return FaultStep(at, kind, target)


def draw(seed: int, duration: float, *, churn_rate: float = 2.0, fault_interval: float = 6.0) -> Schedule:
    """The schedule of a soak of `duration` seconds (see the module docstring).

    Churn steps come every `1/churn_rate` seconds; faults about every `fault_interval` seconds
    (shortened for short runs so they still see every family), from 3 s in until 5 s before the end.
    """
    rng = random.Random(seed)
    model = ChurnModel(random.Random(rng.random()))
    churn = tuple(model.step(round(i / churn_rate, 3)) for i in range(int(duration * churn_rate)))
    decks: dict[str, list[tuple[FaultKind, str]]] = {name: [] for name in FAMILIES}
    order = list(FAMILIES)
    rng.shuffle(order)
    interval = min(fault_interval, max(duration / 7.0, 1.0))
    faults: list[FaultStep] = []
    at = 3.0
    while at < duration - 5.0:
        family = order[len(faults) % len(order)]
        if not decks[family]:
            decks[family] = list(FAMILIES[family])
            rng.shuffle(decks[family])
        kind, target = decks[family].pop()
        faults.append(_fault(rng, round(at, 2), kind, target))
        at += interval * rng.uniform(0.6, 1.4)
    return Schedule(seed=seed, duration=duration, faults=tuple(faults), churn=churn)
