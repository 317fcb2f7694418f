"""Benchmark of csi-controller-sidecars' memory: one combined process against the three single sidecars.

    python -m bench.combined_bench [--count 1000] [--concurrency 50] [--qps 1000] [--burst 2000]
                                   [--only separate|combined] [--dev-venv] [--target 0.6]

The same workload twice, each time on a fresh cluster: first with the three single sidecars
(`python -m sidecars.provisioner`, `sidecars.attacher`, `sidecars.resizer`), then with one
`python -m sidecars.combined` (all three controllers); every one with the same arguments
(`--leader-election`, `--kube-api-qps/-burst` raised to `--qps`/`--burst`, their default workers).

Processes: the "cluster" (this module with `--serve`: the test-bed API server with the PV binder and
protection stand-ins on its store), the sidecars, and this one, which serves the CSI test driver
in-process (zero latency, no node expansion needed) and is the load: it creates `--count` PVCs
(`--concurrency` at a time) and waits until all are Bound (provisioned), creates a VolumeAttachment
for each PV and waits until all are attached, then asks every PVC for 2Gi and waits until all
report it (resized). Then it reads VmRSS and VmHWM of the sidecars from /proc, as the single sidecars
would run in the container image: with the runtime dependencies only (`--dev-venv` keeps the dev
packages importable).

Printed: each phase's time, each process's RSS (and peak), the sum of the three single sidecars, and
the combined process's RSS as a share of it. Target: at most 60% (exit 1 above `--target`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bench.livenessprobe_bench import sidecar_command
from bench.proc import rss_mib
from common.backoff import TokenBucket
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.kube.informer import FuncHandler, Informer
from common.kube.resources import (
    CSI_NODES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    STORAGE_CLASSES,
    VOLUME_ATTACHMENTS,
)
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, DriverConfig, TestDriver

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "hostpath.csi.k8s.io"
NODE = "node-1"
SEPARATE = ("sidecars.provisioner", "sidecars.attacher", "sidecars.resizer")
COMBINED = ("sidecars.combined",)

Obj = dict[str, Any]


# --- the cluster process (--serve) ----------------------------------------------------------------


async def serve(kubeconfig: str) -> None:
    """The API server with the PV binder and protection stand-ins; prints the URL, runs until SIGTERM."""
    import signal

    from testbed.apiserver import ApiServer
    from testbed.controllers import ControlPlane

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        ApiServer(history_size=200_000, kubeconfig=kubeconfig) as server,
        ControlPlane(server.store, ["pv"], resync_period=600.0) as plane,
    ):
        await plane.wait_synced()
        print(server.url, flush=True)
        await stop.wait()


# --- tracking the workload ------------------------------------------------------------------------


@dataclass
class Progress:
    """How many PVCs are Bound, VolumeAttachments attached and PVCs resized, with a waiter each."""

    expected: int
    bound: set[str] = field(default_factory=set)
    attached: set[str] = field(default_factory=set)
    resized: set[str] = field(default_factory=set)
    volumes: dict[str, str] = field(default_factory=dict)
    """PVC name → PV name, once Bound."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def claim(self, pvc: Obj) -> None:
        name, status = pvc["metadata"]["name"], pvc.get("status") or {}
        if status.get("phase") == "Bound":
            self.bound.add(name)
            self.volumes[name] = pvc["spec"]["volumeName"]
        if (status.get("capacity") or {}).get("storage") == "2Gi":
            self.resized.add(name)
        self.changed.set()

    def attachment(self, va: Obj) -> None:
        if (va.get("status") or {}).get("attached"):
            self.attached.add(va["metadata"]["name"])
            self.changed.set()

    async def wait(self, done: Callable[[], set[str]], timeout: float) -> float:
        """Seconds until `done()` holds every object."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while len(done()) < self.expected:
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic() - started


def claim(i: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"pvc-{i}", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "bench",
        },
    }


def attachment(i: int, pv: str) -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": f"va-{i}"},
        "spec": {"attacher": DRIVER, "nodeName": NODE, "source": {"persistentVolumeName": pv}},
    }


async def populate(kube: KubeClient) -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {DEFAULT_TOPOLOGY_KEY: NODE}},
    }
    await kube.create(NODES, node)
    spec = {"drivers": [{"name": DRIVER, "nodeID": NODE, "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}]}
    csinode = {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": NODE}, "spec": spec}
    await kube.create(CSI_NODES, csinode)
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "bench"},
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }
    await kube.create(STORAGE_CLASSES, sc)


async def each(count: int, concurrency: int, call: Callable[[int], Any]) -> None:
    """`call(i)` for every i, `concurrency` at a time."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await call(i)

    async with asyncio.TaskGroup() as group:
        for i in range(count):
            group.create_task(one(i), name=f"bench-{i}")


# --- one run ----------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    phases: dict[str, float]
    rss: dict[str, tuple[float, float]]
    """Module → (VmRSS, VmHWM) in MiB after the three phases."""
    exit_codes: dict[str, int]

    @property
    def total(self) -> float:
        return sum(rss for rss, _ in self.rss.values())


async def start_cluster(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.combined_bench", "--serve", str(directory / "kubeconfig")),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, url


async def start_sidecar(module: str, directory: Path, args: argparse.Namespace) -> asyncio.subprocess.Process:
    log = (directory / f"{module}.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *sidecar_command(module, runtime_deps_only=not args.dev_venv),
        f"--kubeconfig={directory / 'kubeconfig'}",
        f"--csi-address=unix://{directory}/csi.sock",
        f"--kube-api-qps={args.qps:g}",
        f"--kube-api-burst={args.burst}",
        "--leader-election",
        "--leader-election-namespace=default",
        stdout=log,
        stderr=log,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), "POD_NAME": "bench-0"},
    )
    log.close()
    return process


async def stop(process: asyncio.subprocess.Process | None) -> int:
    if process is None:
        return 0
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode if process.returncode is not None else -1


async def one_run(name: str, modules: tuple[str, ...], args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="combb", dir="/tmp") as tmp:
        directory = Path(tmp)
        cluster, _url = await start_cluster(directory)
        driver = TestDriver(DriverConfig(capacity=2**60, call_log_size=10, node_expansion_required=False))
        sidecars: dict[str, asyncio.subprocess.Process] = {}
        kube = KubeClient(
            await load_cluster_config(kubeconfig=str(directory / "kubeconfig")),
            limiter=TokenBucket(math.inf, 1),
            user_agent="combined-bench",
        )
        try:
            async with driver.serve(f"unix://{directory}/csi.sock"), asyncio.TaskGroup() as group:
                await populate(kube)
                progress = Progress(args.count)
                claims = Informer(kube, PERSISTENT_VOLUME_CLAIMS)
                claims.add_handler(FuncHandler(add=progress.claim, update=lambda _, new: progress.claim(new)))
                vas = Informer(kube, VOLUME_ATTACHMENTS)
                vas.add_handler(
                    FuncHandler(add=progress.attachment, update=lambda _, new: progress.attachment(new))
                )
                watches = [group.create_task(i.run(), name=f"bench {i.name}") for i in (claims, vas)]
                for module in modules:
                    sidecars[module] = await start_sidecar(module, directory, args)
                phases = {}

                async def create_claim(i: int) -> None:
                    await kube.create(PERSISTENT_VOLUME_CLAIMS, claim(i))

                async def create_attachment(i: int) -> None:
                    await kube.create(VOLUME_ATTACHMENTS, attachment(i, progress.volumes[f"pvc-{i}"]))

                async def grow(i: int) -> None:
                    patch = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
                    await kube.patch(PERSISTENT_VOLUME_CLAIMS, f"pvc-{i}", patch, namespace="default")

                for phase, start, done in (
                    ("provision", create_claim, lambda: progress.bound),
                    ("attach", create_attachment, lambda: progress.attached),
                    ("resize", grow, lambda: progress.resized),
                ):
                    begun = time.monotonic()
                    waiting = asyncio.create_task(
                        progress.wait(done, args.timeout), name=f"bench wait {phase}"
                    )
                    await each(args.count, args.concurrency, start)
                    await waiting
                    phases[phase] = time.monotonic() - begun
                    print(f"  {name}: {phase} {args.count} in {phases[phase]:.1f} s", flush=True)
                await asyncio.sleep(args.settle)  # queued events written, informers quiet
                rss = {m: (rss_mib(p.pid), rss_mib(p.pid, "VmHWM")) for m, p in sidecars.items()}
                codes = {m: await stop(p) for m, p in sidecars.items()}
                for task in watches:
                    task.cancel()
            return Result(name, phases, rss, codes)
        finally:
            await kube.close()
            for process in (*sidecars.values(), cluster):
                await stop(process)


def report(results: list[Result], target: float) -> bool:
    print("\nRSS after provisioning, attaching and resizing (MiB; peak in parentheses):")
    for result in results:
        for module, (rss, peak) in result.rss.items():
            print(
                f"  {result.name:<9} {module:<22} {rss:7.1f}  ({peak:.1f})  exit {result.exit_codes[module]}"
            )
        times = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.phases.items())
        print(f"  {result.name:<9} {'total':<22} {result.total:7.1f}            [{times}]")
    by_name = {r.name: r for r in results}
    if "separate" not in by_name or "combined" not in by_name:
        return True
    share = by_name["combined"].total / by_name["separate"].total
    verdict = "meets" if share <= target else "MISSES"
    print(f"\ncombined / sum of the three: {share:.0%} ({verdict} the target of at most {target:.0%})")
    return share <= target


async def main_async(args: argparse.Namespace) -> int:
    deps = "dev venv" if args.dev_venv else "runtime dependencies only"
    print(f"csi-controller-sidecars vs the three single sidecars: {args.count} volumes, {deps}")
    runs = {"separate": SEPARATE, "combined": COMBINED}
    results = [await one_run(name, runs[name], args) for name in runs if args.only in ("", name)]
    good = report(results, args.target)
    return 0 if good and all(code == 0 for r in results for code in r.exit_codes.values()) else 1


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        logging.basicConfig(level=logging.WARNING)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        asyncio.run(serve(sys.argv[2]))
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(
        prog="python -m bench.combined_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--qps", type=float, default=1000.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--only", choices=("separate", "combined"), default="")
    parser.add_argument("--dev-venv", action="store_true", help="do not hide the dev-only packages")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds each phase may take")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
