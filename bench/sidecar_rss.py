"""Benchmark of the five sidecars' idle memory: each real entrypoint's RSS, started against the test bed.

    python -m bench.sidecar_rss [--idle 3] [--only dev|runtime]

Test-bed processes: the CSI test driver (`python -m testbed.csidriver`) and, for the three
controller sidecars, the API server (`python -m testbed.apiserver`). Then the five sidecars, all
at once, each with `--http-endpoint=127.0.0.1:0`: csi-provisioner, csi-attacher and csi-resizer
with `--kubeconfig`, csi-node-driver-registrar with a plugin registration directory, and
livenessprobe. Once a sidecar's HTTP endpoint listens it is left alone `--idle` seconds, then its
VmRSS (resident now) and VmHWM (peak resident) are read from /proc.

Two rounds: in the dev venv as it is, then with the runtime dependencies only, i.e. with the
packages only the dev tools bring in (`rich`) hidden, as the container image has them (the same
`--runtime-deps-only` as bench.livenessprobe_bench). Printed: one table, MiB, against the 40 MiB
target of the node sidecars (issue: the registrar and livenessprobe at most 40 MiB idle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.livenessprobe_bench import sidecar_command
from bench.proc import rss_mib

ROOT = Path(__file__).resolve().parents[1]
NODE_TARGET_MIB = 40.0
LISTENING = re.compile(r'"HTTP endpoint listening" .*port=(\d+)')
ROUNDS = {"dev": "dev venv", "runtime": "runtime deps only"}


@dataclass
class Sidecar:
    """One sidecar to measure: its display name, module and flags (`{dir}`, `{csi}`, `{kubeconfig}`)."""

    name: str
    module: str
    args: tuple[str, ...]
    node: bool = False


CONTROLLER_ARGS = ("--kubeconfig={kubeconfig}", "--csi-address={csi}", "--http-endpoint=127.0.0.1:0")
SIDECARS = (
    Sidecar("csi-provisioner", "sidecars.provisioner", CONTROLLER_ARGS),
    Sidecar("csi-attacher", "sidecars.attacher", CONTROLLER_ARGS),
    Sidecar("csi-resizer", "sidecars.resizer", CONTROLLER_ARGS),
    Sidecar(
        "csi-node-driver-registrar",
        "sidecars.registrar",
        (
            "--csi-address={csi}",
            "--kubelet-registration-path={dir}/csi.sock",
            "--plugin-registration-path={dir}/registry",
            "--http-endpoint=127.0.0.1:0",
        ),
        node=True,
    ),
    Sidecar(
        "livenessprobe",
        "sidecars.livenessprobe",
        ("--csi-address={csi}", "--http-endpoint=127.0.0.1:0"),
        node=True,
    ),
)


def open_log(log: Path | None) -> BinaryIO | None:
    return open(log, "ab") if log else None  # the child holds it; closed once spawned


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def spawn(args: list[str], *, log: Path | None = None) -> asyncio.subprocess.Process:
    """`python ARGS` from the repository root; stdout piped, or both streams to `log`."""
    out = open_log(log)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=out or asyncio.subprocess.PIPE,
            stderr=out or asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        )
    finally:
        if out:
            out.close()


async def first_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def testbed(directory: Path) -> AsyncIterator[dict[str, str]]:
    """The test driver and the API server; yields the values for the sidecars' flags."""
    (directory / "registry").mkdir()
    driver = await spawn(
        ["-m", "testbed.csidriver", "--endpoint", f"unix://{directory}/csi.sock", "--v", "0"]
    )
    kubeconfig = directory / "kubeconfig"
    apiserver = await spawn(["-m", "testbed.apiserver", "--port", "0", "--kubeconfig-out", str(kubeconfig)])
    try:
        csi = json.loads(await first_line(driver))["endpoint"]
        await first_line(apiserver)  # its URL, once it listens and the kubeconfig is written
        yield {"dir": str(directory), "csi": csi, "kubeconfig": str(kubeconfig)}
    finally:
        await asyncio.gather(stop(driver), stop(apiserver))


async def listening(log: Path, process: asyncio.subprocess.Process) -> None:
    """Wait until the sidecar's log says its HTTP endpoint listens (30 s at most)."""
    async with asyncio.timeout(30):
        while not LISTENING.search(log_text(log)):
            if process.returncode is not None:
                raise RuntimeError(f"{log.name} exited {process.returncode}:\n{log_text(log)[-3000:]}")
            await asyncio.sleep(0.05)


async def measure(
    values: dict[str, str], *, runtime_deps_only: bool, idle: float
) -> dict[str, tuple[float, float]]:
    """Start the five sidecars, wait until each listens and `idle` seconds more; (VmRSS, VmHWM) by name."""
    directory = Path(values["dir"])
    tag = "runtime" if runtime_deps_only else "dev"
    processes: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
    try:
        for sidecar in SIDECARS:
            log = directory / f"{sidecar.name}-{tag}.log"
            args = [arg.format(**values) for arg in sidecar.args]
            command = sidecar_command(sidecar.module, runtime_deps_only=runtime_deps_only)
            processes[sidecar.name] = (await spawn([*command, *args], log=log), log)
        await asyncio.gather(*(listening(log, process) for process, log in processes.values()))
        await asyncio.sleep(idle)
        return {name: (rss_mib(p.pid), rss_mib(p.pid, "VmHWM")) for name, (p, _) in processes.items()}
    finally:
        await asyncio.gather(*(stop(process) for process, _ in processes.values()))


def report(results: dict[str, dict[str, tuple[float, float]]], idle: float) -> None:
    rounds = list(results)
    print(f"Idle memory of each sidecar, {idle:g} s after its HTTP endpoint listens (MiB; peak = VmHWM)")
    header = f"  {'sidecar':<27}" + "".join(f"{ROUNDS[r] + ' RSS':>24}{'peak':>7}" for r in rounds)
    print(header + f"  {'target':>7}")
    for sidecar in SIDECARS:
        cells = "".join(
            f"{results[r][sidecar.name][0]:>24.1f}{results[r][sidecar.name][1]:>7.1f}" for r in rounds
        )
        target = f"{NODE_TARGET_MIB:>7.0f}" if sidecar.node else f"{'-':>7}"
        print(f"  {sidecar.name:<27}{cells}  {target}")


async def run(args: argparse.Namespace) -> None:
    rounds = [args.only] if args.only else list(ROUNDS)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="rss", dir="/tmp") as tmp:
        async with testbed(Path(tmp)) as values:
            for round_ in rounds:
                results[round_] = await measure(values, runtime_deps_only=round_ == "runtime", idle=args.idle)
    report(results, args.idle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar_rss", description=__doc__)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds to wait once a sidecar listens")
    parser.add_argument("--only", choices=list(ROUNDS), help="one round only: dev venv or runtime deps only")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
