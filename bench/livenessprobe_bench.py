"""Benchmark of livenessprobe's /healthz against the CSI test driver, and the node sidecars' idle memory.

    python -m bench.livenessprobe_bench [--requests 1000] [--concurrency 50] [--probe-timeout 3s]
                                        [--runtime-deps-only]

Three processes, as in a pod: the test driver (`python -m testbed.csidriver`), the real livenessprobe
entrypoint and, for its idle memory only, the real csi-node-driver-registrar. This process is the
load: `--concurrency` clients send `--requests` GET /healthz in total. Printed: requests/s, latency
p50/p99/max, failures, and each sidecar's RSS when idle (and livenessprobe's after the load).

`--runtime-deps-only` starts the sidecars as the container image has them: without the packages only
the dev tools bring into the venv (`rich`, pulled in by import-linter, which structlog imports when
it finds it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.proc import rss_mib

ROOT = Path(__file__).resolve().parents[1]
IDLE_SECONDS = 3.0
DEV_ONLY = ("rich",)
"""Installed in the dev venv only (import-linter needs it); absent from the runtime image."""
PORT = re.compile(rb'"HTTP endpoint listening" .*port=(\d+)')


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)


def sidecar_command(module: str, *, runtime_deps_only: bool) -> list[str]:
    """How to start `module` as `python -m` would, optionally hiding the dev-only packages."""
    if not runtime_deps_only:
        return ["-m", module]
    hide = "".join(f"sys.modules[{name!r}] = None; " for name in DEV_ONLY)
    run = f"runpy.run_module({module!r}, run_name='__main__')"
    code = f"import runpy, sys; {hide}sys.argv[0] = {module!r}; {run}"
    return ["-c", code]


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def start_driver(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await spawn("-m", "testbed.csidriver", "--endpoint", f"unix://{directory}/csi.sock", "--v", "0")
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return process, str(json.loads(line)["endpoint"])


async def http_port(process: asyncio.subprocess.Process) -> int:
    """Read the sidecar's log until its HTTP endpoint says where it listens."""
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        if not line:
            raise RuntimeError("the sidecar exited before listening")
        match = PORT.search(line)
        if match:
            return int(match.group(1))


async def drain(process: asyncio.subprocess.Process) -> None:
    """Keep reading the sidecar's log so it never blocks on a full pipe."""
    assert process.stderr is not None
    while await process.stderr.readline():
        pass


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.terminate()
    return await asyncio.wait_for(process.wait(), 15)


async def load(port: int, args: argparse.Namespace) -> tuple[Results, float]:
    results = Results()
    remaining = args.requests
    url = f"http://127.0.0.1:{port}/healthz"
    loop = asyncio.get_running_loop()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = loop.time()
            async with session.get(url) as response:
                await response.read()
            if response.status == 200:
                results.latencies.append(loop.time() - started)
            else:
                results.failures[response.status] = results.failures.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(5):  # warm up: the first requests open the connections
            async with session.get(url) as response:
                await response.read()
        started = loop.time()
        async with asyncio.TaskGroup() as group:
            for number in range(args.concurrency):
                group.create_task(client(session), name=f"bench-client-{number}")
        return results, loop.time() - started


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lpb", dir="/tmp") as tmp:
        directory = Path(tmp)
        (directory / "registry").mkdir()
        driver, endpoint = await start_driver(directory)
        deps = args.runtime_deps_only
        probe = await spawn(
            *sidecar_command("sidecars.livenessprobe", runtime_deps_only=deps),
            f"--csi-address={endpoint}",
            "--http-endpoint=127.0.0.1:0",
            f"--probe-timeout={args.probe_timeout}",
        )
        registrar = await spawn(
            *sidecar_command("sidecars.registrar", runtime_deps_only=deps),
            f"--csi-address={endpoint}",
            f"--kubelet-registration-path={directory}/csi.sock",
            f"--plugin-registration-path={directory}/registry",
            "--http-endpoint=127.0.0.1:0",
        )
        try:
            port = await http_port(probe)
            await http_port(registrar)
            drains = [asyncio.create_task(drain(p), name="bench-drain") for p in (probe, registrar)]
            await asyncio.sleep(IDLE_SECONDS)
            idle = {"livenessprobe": rss_mib(probe.pid), "csi-node-driver-registrar": rss_mib(registrar.pid)}
            results, elapsed = await load(port, args)
            after, peak = rss_mib(probe.pid), rss_mib(probe.pid, "VmHWM")
            report(args, results, elapsed, idle, (after, peak))
            codes = [await stop(p) for p in (probe, registrar)]
            await asyncio.gather(*drains)
            print(f"  exit codes:      livenessprobe {codes[0]}, registrar {codes[1]} (SIGTERM)")
        finally:
            for process in (probe, registrar, driver):
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def report(
    args: argparse.Namespace,
    results: Results,
    elapsed: float,
    idle: dict[str, float],
    after: tuple[float, float],
) -> None:
    latencies = sorted(results.latencies)
    done = len(latencies)
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = latencies[min(done - 1, int(done * 0.99))] if latencies else 0.0
    failed = sum(results.failures.values())
    deps = "runtime dependencies only" if args.runtime_deps_only else "dev venv"
    load = f"{args.requests} requests, concurrency {args.concurrency}"
    print(f"livenessprobe /healthz: {load}, against the test driver ({deps})")
    print(
        f"  throughput:      {done} ok in {elapsed:.2f} s = {done / elapsed:.0f} requests/s ({failed} failed)"
    )
    if failed:
        print(f"  failures:        {results.failures}")
    if latencies:
        slowest = latencies[-1]
        print(
            f"  latency:         p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {slowest * 1e3:.1f} ms"
        )
    for name, mib in idle.items():
        print(f"  idle RSS:        {name} {mib:.1f} MiB")
    print(f"  after the load:  livenessprobe RSS {after[0]:.1f} MiB (peak {after[1]:.1f} MiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.livenessprobe_bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--probe-timeout", default="3s", help="livenessprobe --probe-timeout")
    parser.add_argument(
        "--runtime-deps-only", action="store_true", help="hide dev-only packages from the sidecars"
    )
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
