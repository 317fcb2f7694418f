"""Benchmark of csi-provisioner: provision N PVCs through the real entrypoint, with and without throttling.

    python -m bench.provisioner_bench [--count 1000] [--rate 100] [--qps 1000] [--burst 2000]
                                      [--workers 100] [--throttled-count 25] [--no-intent]

Three processes: the "cluster" (this module with `--serve`: the test-bed API server, plus with
`--pv-controller` the PV controller stand-ins of `testbed.controllers` — binder, pvc- and
pv-protection — on its store), the real `python -m sidecars.provisioner`, and this one, which serves
the CSI test driver in-process at zero latency and is the load: it creates `--count` PVCs at
`--rate` per second (0: all at once, 50 in flight) and times each from its create to the PV's
appearance (an informer on PVs). Without `--pv-controller` the PVCs are created with the
`volume.kubernetes.io/storage-provisioner` annotation the PV controller would add, so that the
cluster process (a Python API server, the bottleneck on a 2-core machine) spends its CPU on the
provisioner's requests.

Two runs, each with a fresh cluster and provisioner:

* unthrottled: `--kube-api-qps=<--qps> --kube-api-burst=<--burst>` — does the provisioner keep pace
  with PVCs created at `--rate`/s?
* throttled: upstream's defaults `--kube-api-qps=5 --kube-api-burst=10` with `--throttled-count`
  PVCs — the rate must match the limit (qps ÷ API calls per PVC, after the burst).

Printed per run: throughput (PVCs/s from the first create to the last PV), PVC-to-PV latency
p50/p99/max, the provisioner's API calls per PVC from the API server's request log (watches not
counted), its CPU time (total and per PVC, from /proc) and RSS (idle after start, and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bench.proc import api_calls, cpu_seconds, delta, percentile, rss_mib
from common.backoff import TokenBucket
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.kube.informer import FuncHandler, Informer
from common.kube.resources import (
    CSI_NODES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    STORAGE_CLASSES,
)
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, DriverConfig, TestDriver

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "hostpath.csi.k8s.io"
AGENT = "csi-provisioner/"


# --- the cluster process (--serve) ----------------------------------------------------------------


async def serve(kubeconfig: str, *, pv_controller: bool) -> None:
    """The API server (with the PV controller stand-ins); prints the URL, runs until SIGTERM."""
    import signal

    from testbed.apiserver import ApiServer
    from testbed.controllers import ControlPlane

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        ApiServer(history_size=200_000, kubeconfig=kubeconfig) as server,
        ControlPlane(server.store, ["pv"] if pv_controller else [], resync_period=600.0) as plane,
    ):
        await plane.wait_synced()
        print(server.url, flush=True)
        await stop.wait()


# --- measuring --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run's timings: when each PVC was created and when its PV appeared."""

    name: str
    expected: int
    created: dict[str, float] = field(default_factory=dict)
    provisioned: dict[str, float] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def pv_added(self, pv: dict[str, Any], now: float) -> None:
        claim = ((pv.get("spec") or {}).get("claimRef") or {}).get("name", "")
        if claim in self.created and claim not in self.provisioned:
            self.provisioned[claim] = now
            if len(self.provisioned) == self.expected:
                self.finished.set()

    def latencies(self) -> list[float]:
        return sorted(self.provisioned[n] - self.created[n] for n in self.provisioned)

    def elapsed(self) -> float:
        return max(self.provisioned.values()) - min(self.created.values())


async def settled_calls(
    url: str, before: dict[str, int], *, quiet: float = 2.0
) -> tuple[dict[str, int], float]:
    """The provisioner's calls once they stop growing for `quiet` seconds (queued events written), and
    about when the last one was made (loop time, within 0.1 s)."""
    loop = asyncio.get_running_loop()
    last, changed = delta(await api_calls(url, AGENT), before), loop.time()
    while loop.time() - changed < quiet:
        await asyncio.sleep(0.1)
        now = delta(await api_calls(url, AGENT), before)
        if now != last:
            last, changed = now, loop.time()
    return last, changed


# --- one run ----------------------------------------------------------------------------------------


@dataclass
class Result:
    run: Run
    calls: dict[str, int]
    """The provisioner's API calls while provisioning (first create to last PV)."""
    calls_after: dict[str, int]
    """... and once its queued events and intent patches are written too."""
    settled: float
    """When that last write was made (loop time)."""
    cpu: float
    cpu_cluster: float
    cpu_bench: float
    rss_idle: float
    rss_after: float
    exit_code: int


async def start_cluster(directory: Path, *, pv_controller: bool) -> tuple[asyncio.subprocess.Process, str]:
    mode = "--serve-with-pv-controller" if pv_controller else "--serve"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.provisioner_bench", mode, str(directory / "kubeconfig")),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, url


async def populate(kube: KubeClient) -> None:
    await kube.create(
        NODES,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1", "labels": {DEFAULT_TOPOLOGY_KEY: "node-1"}},
        },
    )
    spec = {"drivers": [{"name": DRIVER, "nodeID": "node-1", "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}]}
    await kube.create(
        CSI_NODES,
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": "node-1"}, "spec": spec},
    )
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "bench"},
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "parameters": {"csi.storage.k8s.io/fstype": "ext4"},
    }
    await kube.create(STORAGE_CLASSES, sc)


def claim(i: int, *, annotated: bool) -> dict[str, Any]:
    """PVC `pvc-<i>`; `annotated`: with the storage-provisioner annotations the PV controller would add."""
    anns = {"volume.kubernetes.io/storage-provisioner": DRIVER} if annotated else {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"pvc-{i}", "namespace": "default", "annotations": anns},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Mi"}},
            "storageClassName": "bench",
        },
    }


async def create_claims(kube: KubeClient, run: Run, count: int, rate: float, *, annotated: bool) -> None:
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with semaphore:
            run.created[f"pvc-{i}"] = loop.time()
            await kube.create(PERSISTENT_VOLUME_CLAIMS, claim(i, annotated=annotated))

    start = loop.time()
    async with asyncio.TaskGroup() as group:
        for i in range(count):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            group.create_task(one(i), name=f"bench-create-{i}")


async def one_run(
    name: str, args: argparse.Namespace, *, count: int, rate: float, qps: float, burst: int
) -> Result:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="provb", dir="/tmp") as tmp:
        directory = Path(tmp)
        cluster, url = await start_cluster(directory, pv_controller=args.pv_controller)
        driver = TestDriver(DriverConfig(capacity=2**60, call_log_size=10))
        provisioner: asyncio.subprocess.Process | None = None
        kube = KubeClient(
            await load_cluster_config(kubeconfig=str(directory / "kubeconfig")),
            limiter=TokenBucket(math.inf, 1),
            user_agent="provisioner-bench",
        )
        try:
            async with driver.serve(f"unix://{directory}/csi.sock"):
                await populate(kube)
                run = Run(name, expected=count)
                informer = Informer(kube, PERSISTENT_VOLUMES)
                informer.add_handler(FuncHandler(add=lambda pv: run.pv_added(pv, loop.time())))
                log = (directory / "provisioner.log").open("wb")
                provisioner = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *("-m", "sidecars.provisioner", f"--kubeconfig={directory / 'kubeconfig'}"),
                    f"--csi-address=unix://{directory}/csi.sock",
                    f"--worker-threads={args.workers}",
                    f"--kube-api-qps={qps:g}",
                    f"--kube-api-burst={burst}",
                    f"--persist-provisioning-intent={'false' if args.no_intent else 'true'}",
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                async with asyncio.TaskGroup() as group:
                    watch = group.create_task(informer.run(), name="bench-informer")
                    await informer.wait_synced()
                    await asyncio.sleep(3.0)  # the provisioner starts, lists, and its API budget refills
                    idle = rss_mib(provisioner.pid)
                    before = await api_calls(url, AGENT)
                    pids = (provisioner.pid, cluster.pid, os.getpid())
                    cpu_before = [cpu_seconds(pid) for pid in pids]
                    await create_claims(kube, run, count, rate, annotated=not args.pv_controller)
                    await asyncio.wait_for(run.finished.wait(), args.timeout)
                    cpu = [cpu_seconds(pid) - start for pid, start in zip(pids, cpu_before, strict=True)]
                    calls = delta(await api_calls(url, AGENT), before)
                    calls_after, settled = await settled_calls(url, before)
                    after = rss_mib(provisioner.pid)
                    watch.cancel()
                provisioner.terminate()
                code = await asyncio.wait_for(provisioner.wait(), 60)
                log.close()
                return Result(run, calls, calls_after, settled, *cpu, idle, after, code)
        finally:
            await kube.close()
            for process in (provisioner, cluster):
                if process is not None and process.returncode is None:
                    process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), 10)
                    except TimeoutError:
                        process.kill()
                        await process.wait()


def report(result: Result, *, rate: float, qps: float, burst: int) -> None:
    run, lat = result.run, result.run.latencies()
    elapsed = run.elapsed()
    per_pvc = sum(result.calls_after.values()) / run.expected
    pace = f"created at {rate:g}/s" if rate > 0 else "created all at once (50 in flight)"
    print(f"  {run.name}: {run.expected} PVCs {pace}, --kube-api-qps={qps:g} --kube-api-burst={burst}")
    print(f"    throughput:  {len(lat)} in {elapsed:.2f} s = {len(lat) / elapsed:.1f} PVCs/s")
    print(
        f"    PVC→PV:      p50 {statistics.median(lat) * 1e3:.0f} ms, "
        f"p99 {percentile(lat, 0.99) * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms"
    )
    print(f"    API calls:   {per_pvc:.2f} per PVC {json.dumps(result.calls_after, sort_keys=True)}")
    made = sum(result.calls.values())
    print(f"    API rate:    {made} calls while provisioning = {made / elapsed:.1f} calls/s")
    writes = result.settled - min(run.created.values())
    total = sum(result.calls_after.values())
    print(
        f"    all writes:  {total} calls done {writes:.2f} s after the first create = "
        f"{total / writes:.1f} calls/s, {run.expected / writes:.2f} PVCs/s"
    )
    if qps < 100:
        print(
            f"    API limit:   {qps:g} qps + burst {burst} over {writes:.1f} s = "
            f"{(qps * writes + burst) / writes:.2f} calls/s; {qps:g} qps / {per_pvc:.2f} calls per PVC = "
            f"{qps / per_pvc:.2f} PVCs/s in the long run"
        )
    print(f"    CPU:         {result.cpu:.2f} s = {result.cpu / run.expected * 1e3:.2f} ms per PVC")
    print(
        f"    CPU others:  cluster (API server + PV controller) {result.cpu_cluster:.2f} s, "
        f"load generator + test driver {result.cpu_bench:.2f} s"
    )
    print(f"    RSS:         {result.rss_idle:.1f} MiB idle, {result.rss_after:.1f} MiB after")
    print(f"    exit code:   {result.exit_code} (SIGTERM)")


async def main_async(args: argparse.Namespace) -> None:
    intent = "off" if args.no_intent else "on"
    binder = (
        "with the PV controller stand-ins" if args.pv_controller else "PVCs created annotated for the driver"
    )
    print(
        f"csi-provisioner: --worker-threads={args.workers}, provisioning intent {intent}, "
        f"test driver at zero latency, {binder}"
    )
    fast = await one_run(
        "unthrottled", args, count=args.count, rate=args.rate, qps=args.qps, burst=args.burst
    )
    report(fast, rate=args.rate, qps=args.qps, burst=args.burst)
    if args.throttled_count > 0:
        slow = await one_run("throttled", args, count=args.throttled_count, rate=0, qps=5, burst=10)
        report(slow, rate=0, qps=5, burst=10)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1].startswith("--serve"):
        logging.basicConfig(level=logging.WARNING)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        asyncio.run(serve(sys.argv[2], pv_controller=sys.argv[1] == "--serve-with-pv-controller"))
        return
    # the in-process test driver logs every call through structlog: keep the report readable
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(
        prog="python -m bench.provisioner_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="PVCs created per second; 0: all at once")
    parser.add_argument("--qps", type=float, default=1000.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--throttled-count", type=int, default=25)
    parser.add_argument("--no-intent", action="store_true", help="--persist-provisioning-intent=false")
    parser.add_argument(
        "--pv-controller",
        action="store_true",
        help="run the PV controller stand-ins (annotate, bind) in the cluster process instead of creating "
        "PVCs already annotated for the driver",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
