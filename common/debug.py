"""Debug mode (`--debug`): a sidecar tried on a laptop, with an embedded test bed when there is nothing else.

Every sidecar's `__main__` wraps its `amain`::

    def main() -> None:
        entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.ATTACHER, explain=explain.amain))

The wrapped main runs `explain ...` (only as the first argument) with the sidecar's explain command,
and otherwise `amain` — with `--debug`, after this:

* `--v=5` unless `--v` is given (on a terminal the text format is rendered for the console); leader
  election is off (common.runtime reads `--debug`);
* an embedded API server (`testbed.apiserver`, with the `testbed.controllers` stand-ins of the
  sidecar's `Bed`) when no cluster is configured: no `--kubeconfig`/`--master`, no `$KUBECONFIG`,
  no ~/.kube/config, not in a pod. With a cluster configured, debug mode uses it (also from
  `$KUBECONFIG` or ~/.kube/config, which the Go sidecars never read);
* the CSI test driver (`testbed.csidriver`, named hostpath.csi.k8s.io, node node-1) when
  `--csi-address` is not given and the API server is embedded (or the sidecar has no API server
  access: registrar, livenessprobe);
* for node-driver-registrar without `--plugin-registration-path`, a kubelet stand-in watching a
  registration directory, so the registration completes (the CSINode shows the driver).

All of it runs in this process and event loop; what was started is printed (kubeconfig path for
kubectl, socket path), passed to `amain` as ordinary flags appended to the command line (the last
value of a flag wins), and removed on exit. The test bed is imported only here, only when something
is embedded: a normal start never loads it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FlagError
from common.flags import Flags, FlagSet, HelpRequested

Main = Callable[[list[str]], Awaitable[int]]

DEBUG_VERBOSITY = 5
"""`--v` in debug mode when not given: every CSI call traced (secrets stripped)."""
NODE = "node-1"
"""The embedded test driver's node, and the kubelet stand-in's."""
STORAGE_CLASS = "csi-hostpath-sc"
"""The default StorageClass created on an embedded API server with the embedded driver."""
DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True, kw_only=True)
class Bed:
    """What debug mode may embed for one sidecar."""

    kube: bool = True
    """The sidecar talks to the API server: embed one when no cluster is configured."""
    controllers: tuple[str, ...] = ()
    """The `testbed.controllers` stand-ins run on an embedded API server (names or aliases)."""
    registration: bool = False
    """node-driver-registrar: a kubelet stand-in watching a plugin registration directory."""


PROVISIONER = Bed(controllers=("pv", "scheduler", "kubelet"))
"""PV binder and protection (claims bind, deletes complete), scheduler (WaitForFirstConsumer), kubelet
(the CSINode the topology needs)."""
ATTACHER = Bed(controllers=("pv", "scheduler", "attachdetach", "kubelet"))
"""Plus the attach/detach controller, which creates the VolumeAttachments of scheduled pods."""
RESIZER = Bed(controllers=("pv", "scheduler", "kubelet"))
"""The kubelet stand-in finishes node expansion."""
REGISTRAR = Bed(kube=False, registration=True)
LIVENESSPROBE = Bed(kube=False)


@dataclass(frozen=True)
class Plan:
    """What to embed (see `plan`)."""

    apiserver: bool = False
    driver: bool = False
    kubelet: bool = False

    @property
    def anything(self) -> bool:
        return self.apiserver or self.driver or self.kubelet


def cluster_configured(flags: Flags, environ: Mapping[str, str] = os.environ) -> bool:
    """A cluster the sidecar can be pointed at without us: flags, `$KUBECONFIG`, ~/.kube/config, a pod."""
    if any(flags.defined(f) and flags.string(f) for f in ("kubeconfig", "master")):
        return True
    if environ.get("KUBECONFIG"):
        return True
    if environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_TOKEN.exists():
        return True
    return DEFAULT_KUBECONFIG.exists()


def plan(bed: Bed, flags: Flags, *, cluster: bool) -> Plan:
    """What debug mode embeds, given the flags and whether a cluster is configured (module docstring)."""
    apiserver = bed.kube and not cluster
    kubelet = bed.registration and not flags.is_set("plugin-registration-path")
    no_api = not bed.kube
    driver = not flags.is_set("csi-address") and (apiserver or no_api)
    return Plan(apiserver=apiserver, driver=driver, kubelet=kubelet)


def _peek(flagset: FlagSet, argv: list[str]) -> Flags | None:
    """The parsed flags, or None when `amain` will report the command line itself (help, errors)."""
    try:
        return flagset.parse(argv)
    except (FlagError, HelpRequested):
        return None


def wrap(amain: Main, build_flagset: Callable[[], FlagSet], *, bed: Bed, explain: Main | None = None) -> Main:
    """The sidecar's main with the `explain` subcommand and debug mode around `amain` (module docstring)."""

    async def main(argv: list[str]) -> int:
        if explain is not None and argv[:1] == ["explain"]:
            return await explain(argv[1:])
        flagset = build_flagset()
        flags = _peek(flagset, argv)
        if flags is None or not flags.defined("debug") or not flags.boolean("debug"):
            return await amain(argv)
        extra = [] if flags.is_set("v") else [f"--v={DEBUG_VERBOSITY}"]
        steps = plan(bed, flags, cluster=cluster_configured(flags))
        if not steps.anything:
            return await amain([*argv, *extra])
        async with embedded(flagset.program, bed, steps, flags) as args:
            return await amain([*argv, *extra, *args])

    return main


def _endpoint(address: str) -> str:
    """A `--csi-address` as a gRPC target the stand-ins dial."""
    return f"unix://{address}" if address.startswith("/") else address


@asynccontextmanager
async def embedded(program: str, bed: Bed, steps: Plan, flags: Flags) -> AsyncIterator[list[str]]:
    """Start what `steps` asks for in this process; yield the flags that point the sidecar at it."""
    import shutil  # here, not at the top: a normal start never pays for them (node sidecars' RSS budget)
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="csi-debug-", dir="/tmp"))  # unix socket paths stay short
    try:
        async with AsyncExitStack() as stack:
            args: list[str] = []
            lines = [f"{program} --debug: running in this process (removed on exit, {workdir}):"]
            endpoint = _endpoint(flags.string("csi-address"))
            if steps.driver:
                endpoint = f"unix://{workdir}/csi.sock"
                name = await stack.enter_async_context(_driver(endpoint))
                args.append(f"--csi-address={endpoint}")
                lines.append(f"  CSI test driver {name} (node {NODE}): {endpoint}")
            if steps.apiserver or steps.kubelet:
                registry = workdir / "plugins_registry"
                if steps.kubelet:
                    registry.mkdir()
                    args.append(f"--plugin-registration-path={registry}")
                    if not flags.is_set("kubelet-registration-path"):
                        args.append(f"--kubelet-registration-path={endpoint.removeprefix('unix://')}")
                controllers = bed.controllers + (("kubelet",) if steps.kubelet else ())
                kubeconfig, store = await stack.enter_async_context(
                    _cluster(workdir, controllers, endpoint, registry if steps.kubelet else None)
                )
                if steps.apiserver:
                    os.environ.pop("KUBECONFIG", None)  # the provisioner would prefer it to --kubeconfig
                    args.append(f"--kubeconfig={kubeconfig}")
                    if steps.driver:
                        await _storage_class(store)
                        lines.append(f"  StorageClass {STORAGE_CLASS} (default) for the test driver")
                lines.append(f"  API server with {', '.join(controllers)}: kubectl --kubeconfig={kubeconfig}")
            print("\n".join(lines), file=sys.stdout, flush=True)
            yield args
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def _driver(endpoint: str) -> AsyncIterator[str]:
    from testbed.csidriver import DriverConfig, TestDriver

    driver = TestDriver(DriverConfig(node_id=NODE))
    async with driver.serve(endpoint):
        yield driver.config.name


@asynccontextmanager
async def _cluster(
    workdir: Path, controllers: tuple[str, ...], endpoint: str, registry: Path | None
) -> AsyncIterator[tuple[Path, Any]]:
    """An API server (its kubeconfig in `workdir`) and the stand-ins on its store: (kubeconfig, store)."""
    from testbed.apiserver import ApiServer, ApiServerOptions
    from testbed.controllers import ControlPlane, KubeletConfig

    options = ApiServerOptions(kubeconfig=str(workdir / "kubeconfig"), bookmark_interval=5.0)
    async with ApiServer(options) as server:
        kubelet = KubeletConfig(node_name=NODE, registration_dir=registry, csi_endpoint=endpoint)
        plane = ControlPlane(server.store, controllers, kubelet=kubelet, default_node=NODE, resync_period=5.0)
        async with plane:
            await plane.wait_synced()
            assert server.kubeconfig is not None
            yield server.kubeconfig, server.store


async def _storage_class(store: Any) -> None:
    """A default StorageClass of the test driver, so that a bare PVC is provisioned."""
    await store.create(
        "storageclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "hostpath.csi.k8s.io",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
        },
    )
