"""Registration socket: the gRPC server on `<plugin-registration-path>/<driver>-reg.sock`, kept in place.

`serve()` removes a stale socket (a file there that is not a socket is an error, as upstream),
listens with umask 0077 (a socket only its owner may use, as upstream on Linux), and then looks at
the path every `check_interval` seconds. When someone deleted the socket, it stops the old server
and listens again, so kubelet's plugin watcher sees a new socket and registers the driver again
(upstream leaves the socket gone: /healthz turns 404 and the liveness probe restarts the
container). A file someone else put in its place is left alone. On cancellation (SIGTERM) the
server stops and the socket is removed.

`healthz()` is the /healthz check: the verdicts of `controller`, then GetInfo on the socket over a
fresh, always closed channel with `--timeout` as deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from typing import Any, cast

import grpc

from common.errors import SidecarError
from common.logging import get_logger
from proto import pluginregistration_pb2, pluginregistration_pb2_grpc
from sidecars.registrar.controller import (
    Registration,
    RegistrationServicer,
    Verdict,
    info_error_verdict,
    info_verdict,
    socket_verdict,
)

log = get_logger(__name__)

CHECK_INTERVAL = 1.0
"""Seconds between looks at the registration socket (recreated when it disappeared)."""
STOP_GRACE = 0.5
"""Seconds in-flight registration calls get when the server stops."""
SOCKET_UMASK = 0o077


def remove_stale_socket(path: str) -> None:
    """Remove a socket left at `path` by an earlier run; SidecarError if a non-socket file is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise SidecarError(f"failed to stat the socket {path} with error: {err}") from err
    if not stat.S_ISSOCK(mode):
        raise SidecarError(f"file exists in socketPath {path} but it's not a socket.")
    try:
        os.unlink(path)
    except OSError as err:
        raise SidecarError(f"failed to remove stale socket {path} with error: {err}") from err
    log.info("removed stale registration socket", socket=path)


def _listen_error(path: str, err: RuntimeError) -> SidecarError:
    """A one-line error for a socket gRPC could not bind (its own text points at GRPC_VERBOSITY)."""
    directory = os.path.dirname(path) or "."
    reason = "no such directory" if not os.path.isdir(directory) else str(err).split(";")[0]
    return SidecarError(f"failed to listen on socket {path}: {reason}")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class RegistrationSocket:
    """Serves the Registration service of `registration` on `path` (see the module docstring)."""

    def __init__(
        self, path: str, registration: Registration, *, timeout: float, check_interval: float = CHECK_INTERVAL
    ) -> None:
        self.path = path
        self.registration = registration
        self.timeout = timeout
        """`--timeout`: deadline of the GetInfo self-check."""
        self.check_interval = check_interval
        self.recreated = 0
        """How many times the socket was recreated after it disappeared."""
        self._inode: int | None = None
        self._listening = asyncio.Event()

    async def listening(self) -> None:
        """Wait until the socket accepts calls."""
        await self._listening.wait()

    async def serve(self) -> None:
        """Listen until cancelled, recreating the socket when it disappears; remove it on the way out."""
        remove_stale_socket(self.path)
        server = await self._listen()
        try:
            while True:
                await asyncio.sleep(self.check_interval)
                if _inode(self.path) is not None:
                    continue
                log.warning("registration socket disappeared, recreating it", socket=self.path)
                self._listening.clear()
                await server.stop(None)
                self.registration.reset()
                server = await self._listen()
                self.recreated += 1
        finally:
            self._listening.clear()
            await asyncio.shield(self._close(server))

    async def _listen(self) -> grpc.aio.Server:
        server = grpc.aio.server()
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(
            cast(Any, RegistrationServicer(self.registration)), server
        )
        log.info("Starting Registration Server", socket=self.path)
        old_mask = os.umask(SOCKET_UMASK)  # the socket is bound here, by add_insecure_port
        try:
            server.add_insecure_port(f"unix://{self.path}")
        except RuntimeError as err:
            raise _listen_error(self.path, err) from err
        finally:
            os.umask(old_mask)
        await server.start()
        self._inode = _inode(self.path)
        self._listening.set()
        log.info("Registration Server started", socket=self.path)
        return server

    async def _close(self, server: grpc.aio.Server) -> None:
        await server.stop(STOP_GRACE)
        if self._inode is not None and _inode(self.path) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        log.info("registration socket removed", socket=self.path)

    async def healthz(self) -> Verdict:
        """The /healthz answer: socket and confirmation verdicts, then GetInfo on the socket itself."""
        verdict = socket_verdict(self.path, confirmed=self.registration.confirmed)
        if verdict is not None:
            return verdict
        try:
            info = await get_info(self.path, timeout=self.timeout)
        except grpc.RpcError as err:
            return info_error_verdict(err)
        return info_verdict(info, driver_name=self.registration.driver_name)


async def get_info(path: str, *, timeout: float) -> Any:
    """GetInfo on the registration socket at `path`, over a channel closed before returning."""
    options = [("grpc.default_authority", "localhost")]
    async with grpc.aio.insecure_channel(f"unix://{path}", options=options) as channel:
        stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
        return await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=timeout, wait_for_ready=True)
