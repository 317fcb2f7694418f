"""A process started with `entrypoint.run` exits like a Go sidecar: codes, one-line errors, clean SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from common.entrypoint import parse_or_exit
from common.flags import FlagSet
from common.standardflags import add_standard_flags, version

# A tiny sidecar: parses flags, then waits until cancelled; `--fail` and `--crash` pick a failure.
PROGRAM = """
import asyncio, sys
from common import entrypoint
from common.errors import CSIConnectError
from common.flags import FlagSet

async def main(argv):
    fs = FlagSet("tiny")
    fs.string("fail", "", "raise a user error: direct, group")
    fs.boolean("crash", False, "raise a bug")
    fs.boolean("stubborn", False, "ignore the first cancellation")
    flags = entrypoint.parse_or_exit(fs, argv)
    if flags.string("fail") == "direct":
        raise CSIConnectError("timed out waiting for the driver socket\\n/csi/csi.sock")
    if flags.string("fail") == "group":
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.sleep(3600), name="sleeper")
            group.create_task(fail_soon(), name="failer")
    if flags.boolean("crash"):
        raise RuntimeError("a bug")
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        print("shutting down", flush=True)
        if flags.boolean("stubborn"):
            await asyncio.Event().wait()

async def fail_soon():
    raise CSIConnectError("driver gone")

entrypoint.run("tiny", main)
"""

FORBIDDEN = ("Traceback", "Task was destroyed", "never awaited", "Task exception was never retrieved")


async def start(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROGRAM,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert line == b"ready\n"


async def test_unknown_flag_exits_2_with_one_line() -> None:
    code, out, err = await finish(await start("--foo"))
    assert code == 2
    assert err == "tiny: flag provided but not defined: -foo\n"
    assert out == ""


async def test_user_error_exits_1_with_one_line() -> None:
    code, _, err = await finish(await start("--fail=direct"))
    assert code == 1
    assert err == "tiny: timed out waiting for the driver socket /csi/csi.sock\n"


async def test_user_error_inside_a_task_group_is_one_line_too() -> None:
    code, _, err = await finish(await start("--fail=group"))
    assert code == 1
    assert err == "tiny: driver gone\n"


async def test_a_bug_prints_its_traceback() -> None:
    code, _, err = await finish(await start("--crash"))
    assert code == 1
    assert "Traceback" in err and "RuntimeError: a bug" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_cancels_main_and_exits_0(sig: signal.Signals) -> None:
    proc = await start()
    await wait_ready(proc)
    proc.send_signal(sig)
    code, out, err = await finish(proc)
    assert code == 0
    assert out == "shutting down\n"  # main's finally ran
    assert "received signal, shutting down" in err
    assert not any(word in err for word in FORBIDDEN), err


async def test_a_second_signal_forces_exit() -> None:
    proc = await start("--stubborn")
    await wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    assert (
        await asyncio.wait_for(proc.stdout.readline(), timeout=30) == b"shutting down\n"
    )  # blocked in finally
    proc.send_signal(signal.SIGTERM)
    code, _, err = await finish(proc)
    assert code == 1
    assert err.strip().splitlines()[-1] == "tiny: received SIGTERM again, exiting immediately"


async def test_help_exits_0_with_usage_on_stderr() -> None:
    code, out, err = await finish(await start("--help"))
    assert code == 0
    assert err.startswith("Usage of tiny:\n  -crash\n")
    assert out == ""


def test_parse_or_exit_version(capsys: pytest.CaptureFixture[str]) -> None:
    fs = FlagSet("csi-attacher")
    add_standard_flags(fs, csi_timeout_default=15.0)
    with pytest.raises(SystemExit) as exit_:
        parse_or_exit(fs, ["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"csi-attacher {version()}\n"


def test_parse_or_exit_without_a_version_flag_rejects_it(capsys: pytest.CaptureFixture[str]) -> None:
    fs = FlagSet("livenessprobe")  # upstream's livenessprobe has no --version
    with pytest.raises(SystemExit) as exit_:
        parse_or_exit(fs, ["--version"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "livenessprobe: flag provided but not defined: -version\n"


def test_parse_or_exit_returns_flags() -> None:
    fs = FlagSet("csi-attacher")
    add_standard_flags(fs, csi_timeout_default=15.0)
    assert parse_or_exit(fs, ["--timeout=3s"]).duration("timeout") == 3.0
