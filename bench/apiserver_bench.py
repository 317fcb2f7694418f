"""Benchmark of the test-bed API server: sustained writes per second with watchers attached, and latency.

    python -m bench.apiserver_bench [--duration 5] [--watchers 20] [--writers 16] [--objects 100]

The server runs as its own process (`python -m testbed.apiserver`), as the sidecars see it; this
process is the load: `--writers` concurrent clients merge-patch `--objects` ConfigMaps for
`--duration` seconds while `--watchers` watches stream every change. Printed: writes/s, request
latency p50/p99, and whether (and how fast) every watcher received every change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

NAMESPACE_PATH = "/api/v1/namespaces/default/configmaps"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    received: list[int] = field(default_factory=list)


async def start_server(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.apiserver",
        "--port",
        "0",
        "--kubeconfig-out",
        str(directory / "kubeconfig"),
        "--history-size",
        "200000",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, url


async def watcher(session: aiohttp.ClientSession, url: str, rv: str, index: int, results: Results) -> None:
    async with session.get(f"{url}{NAMESPACE_PATH}?watch=true&resourceVersion={rv}") as response:
        async for _line in response.content:
            results.received[index] += 1


async def writer(
    session: aiohttp.ClientSession, url: str, worker: int, args: argparse.Namespace, results: Results
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration
    headers = {"Content-Type": "application/merge-patch+json"}
    count = 0
    while loop.time() < deadline:
        name = f"cm-{(worker * 7919 + count) % args.objects}"
        body = {"data": {"writer": str(worker), "count": str(count)}}
        started = loop.time()
        async with session.patch(f"{url}{NAMESPACE_PATH}/{name}", json=body, headers=headers) as response:
            await response.read()
            if response.status == 200:
                results.latencies.append(loop.time() - started)
            else:
                results.failures += 1
        count += 1


async def run(args: argparse.Namespace) -> Results:
    results = Results(received=[0] * args.watchers)
    with tempfile.TemporaryDirectory() as directory:
        process, url = await start_server(Path(directory))
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for index in range(args.objects):
                    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{index}"}}
                    async with session.post(f"{url}{NAMESPACE_PATH}", json=body) as response:
                        assert response.status == 201, await response.text()
                async with session.get(f"{url}{NAMESPACE_PATH}?limit=1") as response:
                    rv = (await response.json())["metadata"]["resourceVersion"]
                watches = [
                    asyncio.create_task(watcher(session, url, rv, i, results), name=f"bench-watch-{i}")
                    for i in range(args.watchers)
                ]
                await asyncio.sleep(0.2)
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with asyncio.TaskGroup() as group:
                    for worker in range(args.writers):
                        group.create_task(
                            writer(session, url, worker, args, results), name=f"bench-writer-{worker}"
                        )
                elapsed = loop.time() - started
                writes = len(results.latencies)
                delivered_at = await wait_delivered(results, writes, timeout=30)
                for task in watches:
                    task.cancel()
                await asyncio.gather(*watches, return_exceptions=True)
                report(args, results, elapsed, None if delivered_at is None else delivered_at - started)
        finally:
            process.terminate()
            await process.wait()
    return results


async def wait_delivered(results: Results, writes: int, *, timeout: float) -> float | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(count >= writes for count in results.received):
            return loop.time()
        await asyncio.sleep(0.01)
    return None


def report(args: argparse.Namespace, results: Results, elapsed: float, delivered: float | None) -> None:
    latencies = sorted(results.latencies)
    writes = len(latencies)
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    print(f"test-bed API server: {args.writers} writers, {args.watchers} watches, {args.objects} objects")
    rate = writes / elapsed
    print(f"  writes:          {writes} in {elapsed:.2f} s = {rate:.0f} writes/s ({results.failures} failed)")
    print(f"  latency:         p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    events = sum(min(count, writes) for count in results.received)
    if delivered is None:
        print(f"  watch fan-out:   INCOMPLETE, {events} of {writes * args.watchers} events delivered")
    else:
        total = writes * args.watchers
        speed = total / delivered
        print(f"  watch fan-out:   all {total} events delivered in {delivered:.2f} s ({speed:.0f} events/s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.apiserver_bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of write load")
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--writers", type=int, default=16, help="concurrent writing clients")
    parser.add_argument("--objects", type=int, default=100)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
