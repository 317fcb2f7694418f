"""gRPC serving: the unix-socket grpc.aio server and the per-call wrapper that records and injects.

Every RPC of the Identity, Controller and Node services goes through `Dispatcher.handle`: count the
call, pick the fault rule that applies (if any), run the synchronous handler, answer, record the
`Call`. A method without a handler (GroupController, GetSnapshot) answers UNIMPLEMENTED like a driver
built on csi-lib-utils' unimplemented server.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, NoReturn, Protocol

import grpc
import structlog
from google.protobuf.message import Message

from proto import csi_pb2, csi_pb2_grpc
from testbed.csidriver.calls import Call, CallLog
from testbed.csidriver.faults import Fault, FaultKind, Faults
from testbed.csidriver.state import CsiError

log = structlog.get_logger(__name__)

SERVICES: dict[str, Callable[[Any, grpc.aio.Server], None]] = {
    "Identity": csi_pb2_grpc.add_IdentityServicer_to_server,
    "Controller": csi_pb2_grpc.add_ControllerServicer_to_server,
    "Node": csi_pb2_grpc.add_NodeServicer_to_server,
}

Handler = Callable[[Any], Message]


def socket_path(endpoint: str) -> str:
    """The filesystem path of a CSI endpoint: "unix:///p", "unix://p", "unix:/p" or a bare path."""
    path = endpoint.removeprefix("unix:")
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise ValueError(f"not a unix socket endpoint: {endpoint!r}")
    return os.path.abspath(path)


class Runtime(Protocol):
    """What the dispatcher needs from the driver."""

    @property
    def faults(self) -> Faults: ...

    @property
    def calls(self) -> CallLog: ...

    def crash_soon(self, fault: Fault) -> None:
        """Take the driver down (in another task) as a CRASH fault says."""


async def _forever() -> NoReturn:
    """Never answer: wait until the call is cancelled (client deadline, cancel, or server stop)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class Dispatcher:
    """Wraps the handlers of one driver with call recording and fault injection."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def wrap(self, method: str, handler: Handler | None) -> Callable[[Message, Any], Any]:
        """The grpc.aio method implementation for `method`."""

        async def rpc(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            return await self.handle(method, handler, request, context)

        rpc.__name__ = method
        return rpc

    async def handle(
        self,
        method: str,
        handler: Handler | None,
        request: Message,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Message:
        """Run one call: count, inject, answer, record."""
        started, t0 = time.time(), asyncio.get_running_loop().time()
        self.runtime.calls.received(method)
        fault = self.runtime.faults.take(method, request)
        code, message = grpc.StatusCode.OK, ""
        try:
            return await self._run(method, handler, request, fault)
        except CsiError as err:
            code, message = err.code, err.message
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client or a driver crash"
            raise
        except Exception as err:
            log.exception("handler failed", method=method)
            code, message = grpc.StatusCode.INTERNAL, f"test driver bug: {err!r}"
        finally:
            call = Call(
                method=method,
                request=request,
                code=code,
                message=message,
                started=started,
                duration=asyncio.get_running_loop().time() - t0,
                fault=None if fault is None else str(fault.kind),
            )
            self.runtime.calls.finished(call)
            log.info("csi call", method=method, code=code.name, message=message, fault=call.fault, v=5)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    async def _run(
        self, method: str, handler: Handler | None, request: Message, fault: Fault | None
    ) -> Message:
        if fault is None:
            return self._call(method, handler, request)
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        match fault.kind:
            case FaultKind.DELAY:
                return self._call(method, handler, request)
            case FaultKind.ERROR:
                raise CsiError(fault.code, fault.message)
            case FaultKind.HANG:
                await _forever()
            case FaultKind.SUCCEED_THEN_TIMEOUT:
                try:
                    self._call(method, handler, request)
                except CsiError as err:
                    log.info("work failed before a lost response", method=method, code=err.code.name)
                if fault.timeout is None:
                    await _forever()
                await asyncio.sleep(fault.timeout)
                raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED, fault.message)
            case FaultKind.CRASH:
                self.runtime.crash_soon(fault)
                await _forever()
        raise AssertionError(f"unhandled fault kind {fault.kind}")

    @staticmethod
    def _call(method: str, handler: Handler | None, request: Message) -> Message:
        if handler is None:
            raise CsiError(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by the test driver")
        return handler(request)


def build_server(endpoint: str, dispatcher: Dispatcher, services: Mapping[str, object]) -> grpc.aio.Server:
    """A grpc.aio server for `services` ({"Identity": handlers, ...}) bound to the unix `endpoint`.

    A stale socket file is removed first (as drivers do); its directory is created if missing.
    """
    server = grpc.aio.server()
    for name, add in SERVICES.items():
        impl = services.get(name)
        servicer = SimpleNamespace()
        for method in csi_pb2.DESCRIPTOR.services_by_name[name].methods:
            handler = getattr(impl, method.name, None) if impl is not None else None
            setattr(servicer, method.name, dispatcher.wrap(method.name, handler))
        add(servicer, server)
    path = socket_path(endpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server.add_insecure_port(f"unix://{path}")
    return server
