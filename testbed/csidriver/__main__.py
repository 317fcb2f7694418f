"""Standalone test driver process: ``python -m testbed.csidriver --endpoint unix:///tmp/csi.sock``.

Flags (host-path's names where it has them)::

    --endpoint unix:///tmp/csi.sock       CSI socket (a stale file is replaced)
    --nodeid node-1                       this node; also the default known node
    --drivername hostpath.csi.k8s.io      GetPluginInfo name
    --nodes node-1,node-2                 known nodes (ControllerPublishVolume targets)
    --topology-key topology.hostpath.csi/node   segment key per node; --no-topology turns it off
    --capabilities A,B | +A,-B            controller capabilities (replace, or edit the defaults)
    --node-capabilities A,B | +A,-B       node capabilities
    --no-controller-service               no CONTROLLER_SERVICE (every Controller RPC UNIMPLEMENTED)
    --volume-expansion ONLINE|OFFLINE|none
    --capacity BYTES --max-volumes-per-node N --not-ready
    --control-address 127.0.0.1:0         HTTP control endpoint (see testbed.csidriver.control)
    --v N                                 log verbosity (5 logs every CSI call)

Once serving, the first stdout line is one JSON object: ``{"endpoint": ..., "control_url": ...}``
(control_url null without --control-address). Logs go to stderr. SIGTERM or SIGINT stops serving,
removes the socket and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog

from testbed.csidriver.config import (
    DEFAULT_CONTROLLER_CAPABILITIES,
    DEFAULT_NODE_CAPABILITIES,
    DEFAULT_TOPOLOGY_KEY,
    DriverConfig,
    parse_capabilities,
)
from testbed.csidriver.control import serve_control
from testbed.csidriver.driver import TestDriver


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m testbed.csidriver", description="In-memory CSI test driver")
    p.add_argument("--endpoint", default="unix:///tmp/csi.sock")
    p.add_argument("--nodeid", default="node-1")
    p.add_argument("--drivername", default="hostpath.csi.k8s.io")
    p.add_argument("--nodes", default="", help="comma-separated known node ids (default: --nodeid)")
    p.add_argument("--topology-key", default=DEFAULT_TOPOLOGY_KEY)
    p.add_argument("--no-topology", action="store_true")
    p.add_argument("--capabilities", default=None, help="controller capabilities: A,B or +A,-B")
    p.add_argument("--node-capabilities", default=None, help="node capabilities: A,B or +A,-B")
    p.add_argument("--no-controller-service", action="store_true")
    p.add_argument("--volume-expansion", default="ONLINE", choices=["ONLINE", "OFFLINE", "none"])
    p.add_argument("--capacity", type=int, default=None, help="bytes per topology segment")
    p.add_argument("--max-volumes-per-node", type=int, default=0)
    p.add_argument("--not-ready", action="store_true", help="Probe answers ready=false")
    p.add_argument("--control-address", default=None, help="host:port of the HTTP control endpoint")
    p.add_argument("--v", type=int, default=2)
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> DriverConfig:
    """The driver configuration the flags describe."""
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] or [args.nodeid]
    extra: dict[str, Any] = {} if args.capacity is None else {"capacity": args.capacity}
    return DriverConfig(
        name=args.drivername,
        node_id=args.nodeid,
        topology_key=args.topology_key,
        nodes={n: {args.topology_key: n} for n in nodes},
        topology=not args.no_topology,
        controller_service=not args.no_controller_service,
        volume_expansion=None if args.volume_expansion == "none" else args.volume_expansion,
        controller_capabilities=(
            DEFAULT_CONTROLLER_CAPABILITIES
            if args.capabilities is None
            else parse_capabilities(args.capabilities, default=DEFAULT_CONTROLLER_CAPABILITIES)
        ),
        node_capabilities=(
            DEFAULT_NODE_CAPABILITIES
            if args.node_capabilities is None
            else parse_capabilities(args.node_capabilities, default=DEFAULT_NODE_CAPABILITIES)
        ),
        max_volumes_per_node=args.max_volumes_per_node,
        ready=not args.not_ready,
        **extra,
    )


def configure_logging(verbosity: int) -> None:
    """Key-value logs on stderr; lines with a `v` above `verbosity` are dropped."""

    def by_verbosity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if int(event.pop("v", 0)) > verbosity:
            raise structlog.DropEvent
        return event

    structlog.configure(
        processors=[
            by_verbosity,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


async def run(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT."""
    driver = TestDriver(config_from(args), endpoint=args.endpoint)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(driver.serve())
        control_url = None
        if args.control_address:
            control_url = await stack.enter_async_context(serve_control(driver, args.control_address))
        print(json.dumps({"endpoint": driver.address, "control_url": control_url}), flush=True)
        await stop.wait()
        structlog.get_logger(__name__).info("test driver shutting down", endpoint=driver.endpoint)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.v)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
