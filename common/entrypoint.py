"""Entrypoint: how every sidecar process starts, reports a user error, and stops on a signal.

    def main() -> None:
        entrypoint.run("csi-attacher", amain)

    async def amain(argv: list[str]) -> int:
        flags = entrypoint.parse_or_exit(build_flagset(), argv)
        ...  # build everything, run the TaskGroup; staged shutdown lives in `finally`
        return 0

`run` runs `amain` with `asyncio.run`. SIGTERM or SIGINT cancels the main task once (so shutdown is
its `finally` blocks and TaskGroup cancellation); a second signal exits at once with code 1, like
client-go's `SetupSignalHandler`. A main task that ends cancelled after a signal exits 0.

A `SidecarError` (also inside an ExceptionGroup from a TaskGroup) becomes one line
`<program>: <message>` on stderr and its `exit_code` (FlagError 2, the others 1): user errors never
print a traceback. Any other exception is a bug and does print one (exit 1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import NoReturn

from common.errors import FlagError, SidecarError
from common.flags import Flags, FlagSet, HelpRequested
from common.logging import configure, get_logger
from common.standardflags import version

log = get_logger(__name__)

Main = Callable[[list[str]], Awaitable[int]]


def parse_or_exit(flagset: FlagSet, argv: list[str]) -> Flags:
    """Parse the way Go sidecars do: `--help` prints usage (stderr) and exits 0, `--version` prints
    `<program> <version>` (stdout) and exits 0, a rejected command line prints one line and exits 2."""
    try:
        flags = flagset.parse(argv)
    except HelpRequested:
        sys.stderr.write(flagset.usage())
        raise SystemExit(0) from None
    except FlagError as err:
        _report(flagset.program, err)
        raise SystemExit(err.exit_code) from None
    if flagset.defined("version") and flags.boolean("version"):
        print(flagset.program, version(), flush=True)
        raise SystemExit(0)
    return flags


def run(program: str, main: Main, argv: list[str] | None = None) -> NoReturn:
    """Run `main(argv)` (default: `sys.argv[1:]`) and exit with its code."""
    args = sys.argv[1:] if argv is None else argv
    configure()  # klog's defaults (text on stderr, --v=0) until main applies the logging flags
    try:
        code = asyncio.run(_supervise(program, main, args))
    except KeyboardInterrupt:  # SIGINT before the loop installed its handler
        code = 130
    sys.stdout.flush()
    sys.exit(code)


async def _supervise(program: str, main: Main, argv: list[str]) -> int:
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []

    async def guarded() -> int:
        try:
            return await main(argv)
        except SystemExit as exit_:  # parse_or_exit inside main: keep it out of the event loop
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)

    task = loop.create_task(guarded(), name=f"{program} main")

    def on_signal(sig: signal.Signals) -> None:
        if signals:
            os.write(2, f"{program}: received {sig.name} again, exiting immediately\n".encode())
            os._exit(1)
        signals.append(sig)
        log.info("received signal, shutting down", signal=sig.name)
        task.cancel(msg=f"{sig.name} received")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        code = await task
        return 0 if code is None else code
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if signals and not (current and current.cancelling()):
            return 0
        raise
    except SidecarError as err:
        _report(program, err)
        return err.exit_code
    except BaseExceptionGroup as group:
        return _report_group(program, group, signalled=bool(signals))
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _report(program: str, err: SidecarError) -> None:
    message = " ".join(str(err).splitlines()) or type(err).__name__
    print(f"{program}: {message}", file=sys.stderr, flush=True)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _report_group(program: str, group: BaseExceptionGroup[BaseException], *, signalled: bool) -> int:
    """A TaskGroup failed: report its first user error, or print the bug's traceback."""
    errors = [exc for exc in _leaves(group) if not isinstance(exc, asyncio.CancelledError)]
    if not errors and signalled:
        return 0
    if errors and all(isinstance(exc, SidecarError) for exc in errors):
        first = errors[0]
        assert isinstance(first, SidecarError)
        _report(program, first)
        return first.exit_code
    traceback.print_exception(group)
    return 1
