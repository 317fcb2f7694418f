"""Explain: what a controller sidecar would do with one object now, and why it waits, in plain sentences.

    csi-provisioner explain pvc NAMESPACE/NAME [--kubeconfig=...] [--csi-address=...] [its usual flags]
    csi-attacher explain va NAME
    csi-resizer explain pvc NAMESPACE/NAME

No Go sidecar has this. It reads the cluster (`--kubeconfig`, else `$KUBECONFIG`, ~/.kube/config or
in-cluster) and the driver's capabilities (`--csi-address`), then asks the sidecar's own decision
functions — the ones its sync calls — what they decide for the object. It never writes anything.

This module is the shared plumbing: the command line (`parse`: `explain KIND REF` is recognized only
as the first argument by `common.debug.wrap`; flags may come before or after the words), the
`Session` (API client, driver connection and what the driver reported), the `Report` printed on
stdout, and the facts every explanation includes: the latest events about the object and who holds
each of its finalizers. The per-sidecar reasoning lives in `sidecars/<name>/explain.py`.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.backoff import TokenBucket
from common.csi import CSIConnection, parse_address
from common.errors import ConfigError, FlagError, SidecarError
from common.flags import Flags, FlagSet, HelpRequested
from common.kube.client import ApiError, KubeClient
from common.kube.config import load_cluster_config
from common.kube.informer import Informer, InformerFactory
from common.kube.resources import EVENTS, Resource
from common.metrics import Metrics
from common.runtime import Runtime, StandardConfig
from common.standardflags import version

Obj = dict[str, Any]

CONNECT_TIMEOUT = 5.0
"""Seconds to reach the driver; an explanation without the driver says so instead of failing."""


# ----------------------------------------------------------------------------- the command line


def parse(flagset: FlagSet, argv: list[str], *, kind: str, ref: str) -> tuple[Flags, str]:
    """`KIND REF [flags]` (flags anywhere) → (flags, the REF word). `--help` prints the usage, exit 0."""
    usage = f"usage: {flagset.program} explain {kind} {ref} [flags]"
    tokens: list[str] = []
    words: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            words += args
            break
        if len(arg) < 2 or arg[0] != "-":
            words.append(arg)
            continue
        tokens.append(arg)
        name, has_value, _ = arg.lstrip("-").partition("=")
        if flagset.takes_value(name) and not has_value and args:
            tokens.append(args.pop(0))
    try:
        flags = flagset.parse(tokens)
    except HelpRequested:
        print(usage, file=sys.stderr)
        sys.stderr.write(flagset.usage())
        raise SystemExit(0) from None
    if len(words) != 2 or words[0] != kind:
        raise FlagError(f"{usage} (got: explain {' '.join(words)})".rstrip())
    return flags, words[1]


def split_ref(ref: str, *, namespaced: bool) -> tuple[str, str]:
    """`NAMESPACE/NAME` (namespaced) or `NAME` → (namespace, name); FlagError for anything else."""
    parts = ref.split("/")
    if namespaced and len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    if not namespaced and len(parts) == 1 and parts[0]:
        return "", parts[0]
    raise FlagError(f"expected {'NAMESPACE/NAME' if namespaced else 'NAME'}, got {ref!r}")


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """One explanation: a headline (what the controller does now) and the facts behind it."""

    subject: str
    """E.g. `PersistentVolumeClaim default/data`."""
    controller: str
    """E.g. `csi-provisioner for hostpath.csi.k8s.io`."""
    verdict: str = ""
    facts: list[str] = field(default_factory=list)

    def decide(self, verdict: str) -> None:
        """Set the headline once: the first decision reached is the one the controller acts on."""
        if not self.verdict:
            self.verdict = verdict

    def note(self, fact: str) -> None:
        self.facts.append(fact)

    def render(self) -> str:
        lines = [f"{self.subject} ({self.controller})", f"  {self.verdict or 'Nothing to explain.'}"]
        lines += [f"  - {fact}" for fact in self.facts]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.render()


# ----------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class DriverView:
    """What the driver reported, or why it could not be asked."""

    address: str
    name: str = ""
    plugin: frozenset[str] = frozenset()
    controller: frozenset[str] = frozenset()
    node: frozenset[str] = frozenset()
    error: str = ""

    @property
    def reachable(self) -> bool:
        return not self.error

    def unreachable_sentence(self, program: str) -> str:
        return (
            f"Waiting: {program} cannot reach its CSI driver at {self.address} ({self.error}); it does not "
            "start without it, so nothing happens to this object until the driver answers."
        )


async def _ask_driver(csi: CSIConnection) -> DriverView:
    info = await csi.plugin_info()
    plugin = await csi.plugin_capabilities()
    controller = await csi.controller_capabilities() if "CONTROLLER_SERVICE" in plugin else frozenset()
    try:
        node = await csi.node_capabilities()
    except Exception:  # a controller-only plugin may not serve Node at all
        node = frozenset()
    return DriverView(csi.address, info.name, plugin, controller, node)


@asynccontextmanager
async def _driver(address: str, timeout: float) -> AsyncIterator[tuple[DriverView, CSIConnection | None]]:
    path = parse_address(address).socket_path
    if path is not None and not await asyncio.to_thread(os.path.exists, path):
        yield DriverView(address, error="no socket at this path"), None
        return
    try:
        csi = await CSIConnection.connect(address, call_timeout=timeout, connect_timeout=CONNECT_TIMEOUT)
    except SidecarError as err:
        yield DriverView(address, error=str(err)), None
        return
    try:
        try:
            view = await _ask_driver(csi)
        except Exception as err:
            view = DriverView(address, error=f"{type(err).__name__}: {err}")
        yield view, csi
    finally:
        await csi.close()


# ----------------------------------------------------------------------------- the session


@dataclass
class Session:
    """The connections of one explanation."""

    program: str
    kube: KubeClient
    driver: DriverView
    csi: CSIConnection | None
    """None when the driver could not be reached."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls, program: str, config: StandardConfig, *, use_kubeconfig_env: bool = False
    ) -> AsyncIterator[Session]:
        """Connect to the API server (any kubeconfig) and, if it answers, the driver."""
        try:
            cluster = await load_cluster_config(
                kubeconfig=config.kubeconfig,
                master=config.master,
                use_env=use_kubeconfig_env,
                allow_default_file=True,
            )
        except ConfigError as err:
            raise ConfigError(f"explain needs a cluster: {err}") from None
        kube = KubeClient(
            cluster, limiter=TokenBucket(math.inf, 1), user_agent=f"{program}-explain/{version()}"
        )
        try:
            async with _driver(config.csi_address, config.timeout) as (view, csi):
                yield cls(program=program, kube=kube, driver=view, csi=csi)
        finally:
            await kube.close()

    def runtime(self, config: StandardConfig) -> Runtime:
        """A Runtime on this session's connections, to build the sidecar's controllers exactly as its main
        does. Nothing in it ever runs: their informers stay unstarted (`seed` fills their caches) and
        their event recorders are never written out."""
        if self.csi is None:
            raise SidecarError("the CSI driver is not reachable")
        return Runtime(
            program=self.program,
            config=config,
            metrics=Metrics(),
            csi=self.csi,
            kube=self.kube,
            election_client=self.kube,
            factory=InformerFactory(self.kube),
            driver_name=self.driver.name,
        )

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return await self.kube.get(resource, name, namespace=namespace)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def events(self, obj: Mapping[str, Any]) -> list[Obj]:
        """Events about `obj` (by UID), oldest first."""
        meta = obj.get("metadata") or {}
        if not meta.get("uid"):
            return []
        found = await self.kube.list(
            EVENTS,
            namespace=str(meta.get("namespace") or "default"),
            field_selector=f"involvedObject.uid={meta['uid']}",
        )
        return sorted(found.get("items") or [], key=_event_time)


def seed(informer: Informer, objects: Iterable[Mapping[str, Any]]) -> None:
    """Put objects read by explain into an unstarted informer's cache, as its list would (transformed)."""
    for obj in objects:
        informer.store.put(informer.transform(copy.deepcopy(dict(obj))))


# ----------------------------------------------------------------------------- shared facts


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def ago(timestamp: str, *, now: datetime | None = None) -> str:
    """`3m ago` for an RFC 3339 time ("" when it does not parse)."""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def describe_event(event: Mapping[str, Any]) -> str:
    """`Warning ProvisioningFailed (2m ago, 5 times): <message>`."""
    count = int(event.get("count") or 1)
    when = ago(_event_time(event))
    detail = ", ".join(part for part in (when, f"{count} times" if count > 1 else "") if part)
    head = f"{event.get('type', '')} {event.get('reason', '')}".strip()
    return (
        f"{head} ({detail}): {event.get('message', '')}" if detail else f"{head}: {event.get('message', '')}"
    )


def last_warning(
    events: Sequence[Mapping[str, Any]], reasons: Sequence[str] = ()
) -> Mapping[str, Any] | None:
    """The newest Warning event (of one of `reasons`, if given), unless a later Normal one supersedes it."""
    for event in reversed(events):
        if reasons and event.get("reason") not in reasons:
            continue
        return event if event.get("type") == "Warning" else None
    return None


def event_facts(report: Report, events: Sequence[Mapping[str, Any]], *, limit: int = 3) -> None:
    """The newest events, newest first."""
    if not events:
        report.note("No events about it.")
        return
    for event in list(reversed(events))[:limit]:
        report.note(f"Event {describe_event(event)}")


_FINALIZER_OWNERS = {
    "kubernetes.io/pvc-protection": "kube-controller-manager's pvc-protection controller, "
    "removed once no pod uses the claim",
    "kubernetes.io/pv-protection": "kube-controller-manager's pv-protection controller, "
    "removed once the volume is not bound to a claim",
    "external-provisioner.volume.kubernetes.io/finalizer": "csi-provisioner, "
    "removed once the volume is deleted from the storage backend",
    "csi-sidecars.python/provisioning-intent": "csi-provisioner (python-csi-sidecars), "
    "removed once the PV is saved or the volume is known to be deleted",
    "provisioner.storage.kubernetes.io/cloning-protection": "csi-provisioner, "
    "removed once no pending claim clones this one",
    "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection": "csi-provisioner, "
    "removed once the claims restoring the snapshot are provisioned",
    "snapshot.storage.kubernetes.io/pvc-as-source-protection": "the snapshot controller, "
    "removed once no snapshot of the claim is being taken",
}


def finalizer_owner(finalizer: str) -> str:
    """Who removes `finalizer`, and when: `held by <who>, removed once <when>`."""
    if finalizer in _FINALIZER_OWNERS:
        return "held by " + _FINALIZER_OWNERS[finalizer]
    if finalizer.startswith("external-attacher/"):
        driver = finalizer.removeprefix("external-attacher/")
        return f"held by csi-attacher of {driver}, removed once the volume is detached"
    return "not one the Kubernetes storage controllers or CSI sidecars set: whoever added it removes it"


def finalizer_facts(report: Report, obj: Mapping[str, Any]) -> None:
    """Who holds each finalizer; for an object being deleted, that is what its deletion waits for."""
    meta = obj.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    deleting = meta.get("deletionTimestamp")
    if deleting:
        when = ago(str(deleting))
        waits = "waits for its finalizers" if finalizers else "is about to disappear"
        report.note(f"It is being deleted (since {when or deleting}) and {waits}.")
    for finalizer in finalizers:
        report.note(f"Finalizer {finalizer}: {finalizer_owner(finalizer)}.")
