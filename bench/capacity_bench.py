"""Benchmark of csi-provisioner capacity tracking: API calls per poll for 3 StorageClasses x 10 segments.

    python -m bench.capacity_bench [--classes 3] [--segments 10] [--polls 5] [--poll-interval 1s]

The real `python -m sidecars.provisioner --enable-capacity` against an in-process test-bed API server
and CSI test driver (one node, so one topology segment, per `--segments`; every StorageClass
WaitForFirstConsumer). Counted from the API server's request log, by the provisioner's User-Agent,
CSIStorageCapacity requests only (the informer's one watch is not a call per poll):

* start: what it takes to publish every object (owner lookup, list, creates);
* quiet polls: nothing changed, so GetCapacity per object and no API call at all;
* busy polls: every segment's capacity changed before each poll, so one update per object.

Printed: objects, and per poll the GetCapacity calls and API calls by verb, plus the time the start
took at upstream's default `--kube-api-capacity-qps=1 --kube-api-capacity-burst=5` and unthrottled.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from proto import csi_pb2
from testbed.apiserver import ApiServer
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, DriverConfig, GiB, TestDriver, connect

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "hostpath.csi.k8s.io"
NAMESPACE = "default"
POD = "csi-provisioner-0"
AGENT = "csi-provisioner"


async def populate(server: ApiServer, classes: int, segments: int) -> None:
    store = server.store
    for i in range(segments):
        name = f"node-{i}"
        await store.create("nodes", {"metadata": {"name": name, "labels": {DEFAULT_TOPOLOGY_KEY: name}}})
        await store.create(
            "csinodes",
            {
                "metadata": {"name": name},
                "spec": {
                    "drivers": [{"name": DRIVER, "nodeID": name, "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}]
                },
            },
        )
    for i in range(classes):
        await store.create(
            "storageclasses",
            {
                "metadata": {"name": f"class-{i}"},
                "provisioner": DRIVER,
                "volumeBindingMode": "WaitForFirstConsumer",
                "parameters": {"tier": str(i)},
            },
        )
    await store.create(
        "pods",
        {
            "metadata": {"name": POD, "namespace": NAMESPACE},
            "spec": {"containers": [{"name": "p", "image": "p"}]},
        },
        namespace=NAMESPACE,
    )


def calls(server: ApiServer) -> Counter[str]:
    found: Counter[str] = Counter()
    for record in server.requests.records():
        if (
            record.user_agent.startswith(AGENT)
            and record.resource == "csistoragecapacities"
            and record.verb != "watch"
        ):
            found[record.verb] += 1
    return found


async def wait_for(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the provisioner did not get there in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def use_capacity(driver: TestDriver, segments: int, round_: int) -> None:
    async with connect(driver.address) as stubs:
        for i in range(segments):
            request = csi_pb2.CreateVolumeRequest(name=f"busy-{round_}-{i}")
            request.capacity_range.required_bytes = GiB
            capability = request.volume_capabilities.add()
            capability.mount.SetInParent()
            capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            request.accessibility_requirements.requisite.add(segments={DEFAULT_TOPOLOGY_KEY: f"node-{i}"})
            await stubs.controller.CreateVolume(request)


async def run(args: argparse.Namespace, *, qps: str, burst: str, measure_polls: bool) -> dict[str, Any]:
    objects = args.classes * args.segments
    directory = Path(tempfile.mkdtemp(prefix="capbench"))
    nodes = {f"node-{i}": {DEFAULT_TOPOLOGY_KEY: f"node-{i}"} for i in range(args.segments)}
    driver = TestDriver(DriverConfig(nodes=nodes, node_id="node-0"))
    result: dict[str, Any] = {"objects": objects}
    async with ApiServer(bookmark_interval=0.5) as server, driver.serve(f"unix://{directory}/csi.sock"):
        await populate(server, args.classes, args.segments)
        assert server.kubeconfig is not None
        env = {**os.environ, "NAMESPACE": NAMESPACE, "POD_NAME": POD, "KUBECONFIG": str(server.kubeconfig)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecars.provisioner",
            f"--csi-address=unix://{directory}/csi.sock",
            "--enable-capacity",
            "--capacity-ownerref-level=0",
            f"--capacity-poll-interval={args.poll_interval}",
            f"--kube-api-capacity-qps={qps}",
            f"--kube-api-capacity-burst={burst}",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:

            async def published() -> bool:
                items = (await server.store.list("csistoragecapacities", namespace=NAMESPACE))["items"]
                return len(items) == objects

            result["start_seconds"] = await wait_for(published, timeout=120)
            result["start_calls"] = dict(calls(server))
            if measure_polls:
                result["quiet"] = await polls(server, driver, args, busy=False)
                result["busy"] = await polls(server, driver, args, busy=True)
        finally:
            process.terminate()
            await process.wait()
    return result


async def polls(
    server: ApiServer, driver: TestDriver, args: argparse.Namespace, *, busy: bool
) -> dict[str, float]:
    objects = args.classes * args.segments
    before_calls, before_get = calls(server), driver.calls.counts["GetCapacity"]
    for round_ in range(args.polls):
        if busy:
            await use_capacity(driver, args.segments, round_)
        target = driver.calls.counts["GetCapacity"] + objects

        async def polled(target: int = target) -> bool:
            return driver.calls.counts["GetCapacity"] >= target

        await wait_for(polled, timeout=30)
    await asyncio.sleep(0.5)  # the last poll's writes
    after = calls(server)
    per_poll: dict[str, float] = {
        "GetCapacity": (driver.calls.counts["GetCapacity"] - before_get) / args.polls,
    }
    for verb in sorted(set(after) | set(before_calls)):
        per_poll[verb] = (after[verb] - before_calls[verb]) / args.polls
    per_poll["api_calls"] = sum(v for k, v in per_poll.items() if k != "GetCapacity")
    return per_poll


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--polls", type=int, default=5)
    parser.add_argument("--poll-interval", default="1s")
    args = parser.parse_args(argv)
    # the in-process test driver logs every call through structlog: keep the report readable
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    fast = asyncio.run(run(args, qps="1000", burst="1000", measure_polls=True))
    upstream = asyncio.run(run(args, qps="1", burst="5", measure_polls=False))
    print(f"capacity tracking: {args.classes} StorageClasses x {args.segments} segments = {fast['objects']}")
    print(f"start (unthrottled): {fast['start_seconds']:.2f} s, API calls {fast['start_calls']}")
    slow = upstream["start_seconds"]
    print(f"start (upstream's qps 1, burst 5): {slow:.2f} s, API calls {upstream['start_calls']}")
    for kind in ("quiet", "busy"):
        figures = ", ".join(f"{k} {v:g}" for k, v in fast[kind].items())
        print(f"per poll, {kind}: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
