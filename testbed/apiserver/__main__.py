"""Run the test-bed API server as a process: `python -m testbed.apiserver --port 0 --kubeconfig-out FILE`.

Prints the URL on the first line of stdout once it listens (and the kubeconfig is written), then serves
until SIGTERM or SIGINT. Out-of-process tools drive its faults through `/testbed/...`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from testbed.apiserver.server import ApiServer, ApiServerOptions


def parse_args(argv: list[str]) -> ApiServerOptions:
    parser = argparse.ArgumentParser(prog="python -m testbed.apiserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig-out", default=None, help="where to write the kubeconfig")
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a generated CA and a bearer token"
    )
    parser.add_argument("--token", default=None, help="bearer token to require (generated with --tls)")
    parser.add_argument("--history-size", type=int, default=5000)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument(
        "--no-storage-protection", action="store_true", help="disable StorageObjectInUseProtection"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    return ApiServerOptions(
        host=args.host,
        port=args.port,
        tls=args.tls,
        token=args.token,
        history_size=args.history_size,
        bookmark_interval=args.bookmark_interval,
        storage_object_in_use_protection=not args.no_storage_protection,
        kubeconfig=args.kubeconfig_out,
    )


async def serve(options: ApiServerOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ApiServer(options) as server:
        print(server.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
