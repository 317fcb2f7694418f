"""Test kit shared by the tests: poll-until, short socket dirs, real sidecar processes and how to stop,
scrape and measure them, a free port, a gRPC error."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
import grpc

from testbed.demo import free_port as free_port  # the one copy, shared with `make demo`

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


async def eventually(
    probe: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call `probe` until it returns a truthy value (returned) or `timeout` passes (AssertionError).

    An exception from `probe` counts as "not yet"; the last one is reported on timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except AssertionError as exc:
            last = exc
        except Exception as exc:
            last = exc
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        await asyncio.sleep(interval)


def short_tempdir(prefix: str = "csi") -> Path:
    """A temporary directory with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class SidecarProcess:
    """A real sidecar entrypoint (`python -m sidecars.<name> ...`) run as a subprocess.

    Output (stdout+stderr) goes to a log file so a test can read it and a failing test can show it.
    """

    def __init__(self, module: str, args: Sequence[str], *, log_dir: Path, env: dict[str, str] | None = None):
        self.module = module
        self.args = list(args)
        self.log_path = log_dir / f"{module.replace('.', '_')}-{os.getpid()}-{id(self):x}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SidecarProcess:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        proc = self.proc
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        return code

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL and fail if it does not exit in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            await self.wait(5)
            raise AssertionError(
                f"{self.module} did not exit within {timeout}s of SIGTERM:\n{self.log()[-4000:]}"
            ) from None

    async def kill(self) -> int:
        """SIGKILL (a crash), and wait."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return await self.wait(5)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class FakeRpcError(grpc.RpcError):
    """What grpc.aio raises for a failed call, reduced to the two methods the sidecars read."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


ASYNCIO_COMPLAINTS = ("Task was destroyed but it is pending", "never awaited")
"""What asyncio logs about a task or coroutine left behind: never in a cleanly stopped sidecar's log."""


async def stop_cleanly(
    process: SidecarProcess, *, timeout: float = 15.0, forbidden: Sequence[str] = ASYNCIO_COMPLAINTS
) -> str:
    """SIGTERM: exit 0 within `timeout` and none of `forbidden` in the log; returns the log."""
    code = await process.stop(timeout=timeout)
    log = process.log()
    assert code == 0, log[-3000:]
    for complaint in forbidden:
        assert complaint not in log, log[-3000:]
    return log


async def scrape(port: int) -> str:
    """GET /metrics on 127.0.0.1:`port`: its text (the answer must be 200)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as rsp:
        assert rsp.status == 200
        return await rsp.text()


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def field_docstrings(cls: type) -> dict[str, str | None]:
    """Each annotated field of class `cls` → the string literal right below it (its docstring), or None."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str | None] = {}
    for index, item in enumerate(node.body):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            below = node.body[index + 1] if index + 1 < len(node.body) else None
            literal = (
                below.value.value
                if isinstance(below, ast.Expr) and isinstance(below.value, ast.Constant)
                else None
            )
            docs[item.target.id] = literal if isinstance(literal, str) else None
    return docs
