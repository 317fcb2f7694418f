"""Benchmark of csi-attacher: attach, then detach, N VolumeAttachments through the real entrypoint.

    python -m bench.attacher_bench [--count 1000] [--nodes 10] [--workers 10] [--qps 1000] [--burst 2000]
                                   [--concurrency 50] [--reconcile-sync 1m]

Three processes on the machine: the test-bed API server (`python -m testbed.apiserver`), the real
`python -m sidecars.attacher`, and this one, which serves the CSI test driver in-process (so its
call counts are at hand) and is the load: it creates `--count` VolumeAttachments (`--concurrency`
at a time, spread over `--nodes` nodes), waits until each is `attached`, then deletes them all and
waits until each is gone. It watches VolumeAttachments with an informer to time each one.

Printed per phase: throughput (VolumeAttachments/s from the first create to the last completion),
latency p50/p99/max (create → `attached: true`; delete → gone), the attacher's API calls per
VolumeAttachment from the API server's request log (watches not counted), the CSI calls, and the
attacher's resident memory (after each phase, and its peak).

`--kube-api-qps`/`--kube-api-burst` default to 5/10 upstream, which caps any attacher at about
1.7 attachments/s (three writes each); the benchmark raises them (`--qps`, `--burst`) to measure
the attacher itself.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bench.proc import api_calls, delta, percentile, rss_mib
from common.backoff import TokenBucket
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.kube.informer import FuncHandler, Informer
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, DriverConfig, GiB, TestDriver, Volume

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "hostpath.csi.k8s.io"
AGENT = "csi-attacher/"


@dataclass
class Phase:
    """One phase's timings: when each VA's request started and when it completed."""

    name: str
    started: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def complete(self, name: str, now: float) -> None:
        if name in self.started and name not in self.done:
            self.done[name] = now
            if len(self.done) == self.expected:
                self.finished.set()

    def latencies(self) -> list[float]:
        return sorted(self.done[n] - self.started[n] for n in self.done)

    def elapsed(self) -> float:
        return max(self.done.values()) - min(self.started.values())


async def start_apiserver(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "testbed.apiserver", "--port", "0", "--history-size", "200000"),
        *("--kubeconfig-out", str(directory / "kubeconfig")),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, url


async def populate(kube: KubeClient, driver: TestDriver, args: argparse.Namespace) -> None:
    """Nodes with CSINodes, and one bound PV (and driver volume) per VolumeAttachment to come."""
    for n in range(args.nodes):
        node = f"node-{n}"
        await kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        spec = {"drivers": [{"name": DRIVER, "nodeID": node, "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}]}
        await kube.create(
            CSI_NODES,
            {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node}, "spec": spec},
        )

    async def one(i: int) -> None:
        handle = f"vol-{i}"
        driver.state.volumes[handle] = Volume(
            volume_id=handle,
            name=f"pv-{i}",
            capacity=GiB,
            parameters={},
            mutable_parameters={},
            volume_context={},
            access_type="mount",
            segments={DEFAULT_TOPOLOGY_KEY: f"node-{i % args.nodes}"},
        )
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pv-{i}",
                "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"],
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"},
                "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }
        await kube.create(PERSISTENT_VOLUMES, pv)
        await kube.patch(PERSISTENT_VOLUMES, f"pv-{i}", {"status": {"phase": "Bound"}}, subresource="status")

    await bounded([lambda i=i: one(i) for i in range(args.count)], 50)


async def bounded(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    async with asyncio.TaskGroup() as group:
        for number, job in enumerate(jobs):
            group.create_task(run(job), name=f"bench-job-{number}")


def va_body(i: int, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": f"va-{i}"},
        "spec": {
            "attacher": DRIVER,
            "nodeName": f"node-{i % nodes}",
            "source": {"persistentVolumeName": f"pv-{i}"},
        },
    }


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="attb", dir="/tmp") as tmp:
        directory = Path(tmp)
        apiserver, url = await start_apiserver(directory)
        nodes = {f"node-{n}": {DEFAULT_TOPOLOGY_KEY: f"node-{n}"} for n in range(args.nodes)}
        driver = TestDriver(DriverConfig(nodes=nodes, call_log_size=10))
        attacher: asyncio.subprocess.Process | None = None
        kube = KubeClient(
            await load_cluster_config(kubeconfig=str(directory / "kubeconfig")),
            limiter=TokenBucket(math.inf, 1),
            user_agent="attacher-bench",
        )
        try:
            async with driver.serve(f"unix://{directory}/csi.sock"):
                await populate(kube, driver, args)
                attach, detach = Phase("attach", expected=args.count), Phase("detach", expected=args.count)

                def on_update(_: dict[str, Any], new: dict[str, Any]) -> None:
                    if (new.get("status") or {}).get("attached"):
                        attach.complete(new["metadata"]["name"], loop.time())

                informer = Informer(kube, VOLUME_ATTACHMENTS)
                informer.add_handler(
                    FuncHandler(
                        update=on_update,
                        delete=lambda obj: detach.complete(obj["metadata"]["name"], loop.time()),
                    )
                )
                log = (directory / "attacher.log").open("wb")
                attacher = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *("-m", "sidecars.attacher", f"--kubeconfig={directory / 'kubeconfig'}"),
                    f"--csi-address=unix://{directory}/csi.sock",
                    f"--worker-threads={args.workers}",
                    f"--kube-api-qps={args.qps}",
                    f"--kube-api-burst={args.burst}",
                    f"--reconcile-sync={args.reconcile_sync}",
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                async with asyncio.TaskGroup() as group:
                    watch = group.create_task(informer.run(), name="bench-informer")
                    await informer.wait_synced()
                    await asyncio.sleep(2.0)  # the attacher starts and lists
                    idle = rss_mib(attacher.pid)
                    before = await api_calls(url, AGENT)
                    csi_before = dict(driver.calls.counts)

                    async def create(i: int) -> None:
                        attach.started[f"va-{i}"] = loop.time()
                        await kube.create(VOLUME_ATTACHMENTS, va_body(i, args.nodes))

                    await bounded([lambda i=i: create(i) for i in range(args.count)], args.concurrency)
                    await asyncio.wait_for(attach.finished.wait(), args.timeout)
                    after_attach = await api_calls(url, AGENT)
                    csi_attach = dict(driver.calls.counts)
                    rss_attached = rss_mib(attacher.pid)

                    async def delete(i: int) -> None:
                        detach.started[f"va-{i}"] = loop.time()
                        await kube.delete(VOLUME_ATTACHMENTS, f"va-{i}")

                    await bounded([lambda i=i: delete(i) for i in range(args.count)], args.concurrency)
                    await asyncio.wait_for(detach.finished.wait(), args.timeout)
                    after_detach = await api_calls(url, AGENT)
                    csi_detach = dict(driver.calls.counts)
                    rss_detached, peak = rss_mib(attacher.pid), rss_mib(attacher.pid, "VmHWM")
                    watch.cancel()
                attacher.terminate()
                code = await asyncio.wait_for(attacher.wait(), 30)
                log.close()
                report(
                    args,
                    [attach, detach],
                    [delta(after_attach, before), delta(after_detach, after_attach)],
                    [delta(csi_attach, csi_before), delta(csi_detach, csi_attach)],
                    (idle, rss_attached, rss_detached, peak),
                    code,
                )
        finally:
            await kube.close()
            for process in (attacher, apiserver):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    api: list[dict[str, int]],
    csi: list[dict[str, int]],
    rss: tuple[float, float, float, float],
    code: int,
) -> None:
    print(
        f"csi-attacher: {args.count} VolumeAttachments on {args.nodes} nodes, "
        f"--worker-threads={args.workers}, --kube-api-qps={args.qps:g} --kube-api-burst={args.burst}, "
        f"{args.concurrency} concurrent creates/deletes"
    )
    for phase, calls, rpcs in zip(phases, api, csi, strict=True):
        lat = phase.latencies()
        elapsed = phase.elapsed()
        total = sum(calls.values())
        print(f"  {phase.name}:")
        print(
            f"    throughput:  {len(lat)} in {elapsed:.2f} s = {len(lat) / elapsed:.1f} VolumeAttachments/s"
        )
        p50, p99 = statistics.median(lat), percentile(lat, 0.99)
        print(f"    latency:     p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms")
        per_va = total / args.count
        print(f"    API calls:   {per_va:.2f} per VolumeAttachment {json.dumps(calls, sort_keys=True)}")
        print(f"    CSI calls:   {json.dumps(rpcs, sort_keys=True)}")
    idle, attached, detached, peak = rss
    print(
        f"  attacher RSS:  {idle:.1f} MiB started, {attached:.1f} MiB with {args.count} attached, "
        f"{detached:.1f} MiB after detach (peak {peak:.1f} MiB)"
    )
    print(f"  exit code:     {code} (SIGTERM)")


def main() -> None:
    # the in-process test driver logs every call through structlog: keep the report readable
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(
        prog="python -m bench.attacher_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--qps", type=float, default=1000.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--reconcile-sync", default="1m")
    parser.add_argument("--timeout", type=float, default=600.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
