"""Run a test bed as a process: `python -m testbed.controllers --port 0 --kubeconfig-out FILE ...`.

Starts the test-bed API server and the chosen control-plane stand-ins on its store, prints one JSON
line on stdout once everything serves — `{"url", "kubeconfig", "controllers", "node"}` — and runs
until SIGTERM or SIGINT, then stops cleanly (exit 0).

    --host ADDR --port N [--tls]            where the API server listens
    --kubeconfig-out FILE                    where to write its kubeconfig
    --controllers pv,scheduler,attachdetach,kubelet   stand-ins to run (default: all)
    --node NAME                              the kubelet's node (default node-1)
    --registration-dir DIR                   the kubelet's plugin registration directory
    --csi-endpoint unix:///path/csi.sock     the driver endpoint (overrides the registered one,
                                             or registers the driver directly without a directory)
    --root-dir DIR                           kubelet root used in staging/target paths
    --schedule-pods                          place pods without spec.nodeName on --node
    --resync-period SECONDS                  periodic resync of the stand-ins (default 15)
    --v N                                    log verbosity (0: warnings and up; 1: info)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from testbed.controllers.plane import Testbed, TestbedOptions, expand_names, run_testbed


def parse_args(argv: Sequence[str]) -> tuple[TestbedOptions, int]:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.controllers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--kubeconfig-out", default=None)
    parser.add_argument("--controllers", default="all")
    parser.add_argument("--node", default="node-1")
    parser.add_argument("--registration-dir", type=Path, default=None)
    parser.add_argument("--csi-endpoint", default=None)
    parser.add_argument("--root-dir", default="/var/lib/kubelet")
    parser.add_argument("--schedule-pods", action="store_true")
    parser.add_argument("--resync-period", type=float, default=15.0)
    parser.add_argument("--v", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        controllers = tuple(expand_names(args.controllers.split(",")))
    except ValueError as exc:
        parser.error(str(exc))
    options = TestbedOptions(
        host=args.host,
        port=args.port,
        tls=args.tls,
        kubeconfig_out=args.kubeconfig_out,
        controllers=controllers,
        node_name=args.node,
        registration_dir=args.registration_dir,
        csi_endpoint=args.csi_endpoint,
        root_dir=args.root_dir,
        schedule_pods=args.schedule_pods,
        resync_period=args.resync_period,
    )
    return options, args.v


def configure_logging(verbosity: int) -> None:
    """Key-value logs on stderr: warnings and up, info too from `--v 1`, debug from `--v 5`."""
    level = logging.DEBUG if verbosity >= 5 else logging.INFO if verbosity >= 1 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr)

    def by_level(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if logging.getLevelName(method.upper()) < level:
            raise structlog.DropEvent
        return event

    structlog.configure(
        processors=[
            by_level,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def announce(bed: Testbed, options: TestbedOptions) -> None:
    line = {
        "url": bed.server.url,
        "kubeconfig": str(bed.server.kubeconfig),
        "controllers": list(bed.plane.controllers),
        "node": options.node_name,
    }
    print(json.dumps(line), flush=True)


async def serve(options: TestbedOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_testbed(options, stop=stop, on_ready=lambda bed: announce(bed, options))


def main(argv: Sequence[str] | None = None) -> None:
    options, verbosity = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(verbosity)
    asyncio.run(serve(options))


if __name__ == "__main__":
    main()
