"""Launching a whole test-bed cluster as processes: the demo's and the chaos soak's supervisor.

A `Cluster` starts, in one private directory:

* the control plane (`python -m testbed.controllers`: API server + PV controller, scheduler,
  attach-detach controller and a kubelet with a plugin registration directory),
* the CSI test driver (`python -m testbed.csidriver`, with its HTTP control endpoint),
* any number of sidecar processes (`python -m sidecars.<name> ...`), each with its own log file,

and stops everything it started — on exit, on an exception and on Ctrl-C — leaving no process or
socket behind. Processes can be killed (SIGKILL), stopped (SIGTERM) and started again by name, which
is what the chaos soak does to leaders and standbys.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
DRIVER_NAME = "hostpath.csi.k8s.io"
NODE = "node-1"


@dataclass
class Process:
    """One supervised process: its command line, log file and restart count."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _closed()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the supervisor
        )
        self.starts += 1

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    async def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not exit in time. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.popen.wait), timeout)
            except TimeoutError:
                self.popen.kill()
                await asyncio.to_thread(self.popen.wait)
        self._closed()
        return self.popen.returncode

    async def kill(self) -> int | None:
        """SIGKILL: a crash, as when a node dies or the OOM killer strikes."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.kill()
            await asyncio.to_thread(self.popen.wait)
        self._closed()
        return self.popen.returncode

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Cluster:
    """The test bed and sidecars as processes in one directory (see the module docstring)."""

    def __init__(self, *, workdir: Path | None = None, keep: bool = False, verbosity: int = 0) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="csi-testbed-", dir="/tmp"))
        self.keep = keep
        self.verbosity = verbosity
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.registration_dir = self.dir / "plugins_registry"
        self.registration_dir.mkdir(exist_ok=True)
        self.socket = self.dir / "csi.sock"
        self.kubeconfig = self.dir / "kubeconfig"
        self.processes: dict[str, Process] = {}
        self.control_plane: dict[str, Any] = {}
        self.driver_control = ""

    @property
    def csi_endpoint(self) -> str:
        return f"unix://{self.socket}"

    def process(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, self.logs / f"{name}.log", dict(env or {}))
        self.processes[name] = proc
        return proc

    async def _ready_line(self, proc: Process, key: str, *, timeout: float) -> dict[str, Any]:
        """Wait for the JSON line (with `key`) a test-bed process prints once it serves."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
            for line in text.splitlines():
                if line.startswith("{") and f'"{key}"' in line:
                    found: dict[str, Any] = json.loads(line)
                    return found
            if not proc.running():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not start within {timeout}s:\n{proc.tail()}")

    async def start_testbed(self, *, driver_args: list[str] | None = None) -> None:
        """The control plane and the CSI test driver, ready to serve."""
        plane = self.process(
            "control-plane",
            [
                sys.executable,
                "-m",
                "testbed.controllers",
                "--port",
                "0",
                "--kubeconfig-out",
                str(self.kubeconfig),
                "--registration-dir",
                str(self.registration_dir),
                "--csi-endpoint",
                self.csi_endpoint,
                "--node",
                NODE,
                "--resync-period",
                "5",
                "--v",
                str(min(self.verbosity, 1)),
            ],
        )
        plane.start()
        self.control_plane = await self._ready_line(plane, "kubeconfig", timeout=30)
        driver = self.process(
            "csi-driver",
            [
                sys.executable,
                "-m",
                "testbed.csidriver",
                "--endpoint",
                self.csi_endpoint,
                "--nodeid",
                NODE,
                "--drivername",
                DRIVER_NAME,
                "--control-address",
                "127.0.0.1:0",
                *(driver_args or []),
            ],
        )
        driver.start()
        self.driver_control = (await self._ready_line(driver, "control_url", timeout=30))["control_url"]

    def sidecar(
        self, name: str, module: str, args: list[str], *, env: dict[str, str] | None = None
    ) -> Process:
        """Start a sidecar process (`python -m sidecars.<module> args`)."""
        proc = self.process(name, [sys.executable, "-m", f"sidecars.{module}", *args], env=env)
        proc.start()
        return proc

    async def restart(self, name: str) -> Process:
        proc = self.processes[name]
        if proc.running():
            await proc.stop()
        proc.start()
        return proc

    async def stop(self) -> dict[str, int | None]:
        """Stop sidecars first (they release leases and sockets), then the driver and the control plane."""
        order = [n for n in self.processes if n not in ("csi-driver", "control-plane")]
        codes = {}
        await asyncio.gather(*(self.processes[n].stop() for n in order))
        for name in order:
            codes[name] = self.processes[name].returncode()
        for name in ("csi-driver", "control-plane"):
            if name in self.processes:
                codes[name] = await self.processes[name].stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return codes

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())
