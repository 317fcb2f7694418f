"""The CSI call interceptor: every unary call to the driver is timed, recorded and traced here.

One grpc.aio client interceptor does what csi-lib-utils splits into `LogGRPC` and
`RecordMetricsClientInterceptor`:

* every call is recorded through an `OperationRecorder` (the `csi_sidecar_operations_seconds`
  histogram) with the full method name, Go's name of the status code ("unknown-non-grpc" for an
  exception that is not a gRPC status) and the driver name — "unknown-driver" until GetPluginInfo
  has answered, which is why upstream's Probe and GetPluginInfo samples carry that label;
* at `--v=5` the call is traced: "GRPC call" with the request, then "GRPC response" or
  "GRPC error". Request and response go through `strip_secrets`, lazily, so secrets never reach a
  log line and nothing is rendered at lower verbosity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from common.csi.errors import code_name, describe
from common.csi.sanitize import strip_secrets, truncate
from common.logging import Lazy, enabled, get_logger

log = get_logger(__name__)

OPERATIONS_METRIC = "csi_sidecar_operations_seconds"
"""csi-lib-utils' histogram of every CSI call, by driver_name, grpc_status_code and method_name."""
OPERATIONS_HELP = "[ALPHA] Container Storage Interface operation duration with gRPC error code status total"
OPERATIONS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600)
UNKNOWN_DRIVER = "unknown-driver"
"""The driver_name of a call made before GetPluginInfo answered (Probe, GetPluginInfo itself)."""
RECONNECTS_METRIC = "csi_sidecar_reconnects_total"
"""Ours, not upstream's: how often the channel to the driver was re-established, by driver_name."""
RECONNECTS_HELP = (
    "Number of times the connection to the CSI driver was re-established (python-csi-sidecars only)."
)
"""The driver_name of a call made before GetPluginInfo answered (Probe, GetPluginInfo itself)."""

if TYPE_CHECKING:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class OperationRecorder(Protocol):
    """Receives one sample per CSI call (implemented by the metrics module).

    A recorder may also define `record_csi_reconnect(*, driver_name: str) -> None`; the connection
    calls it after each reconnect when present.
    """

    def record_csi_operation(
        self, *, driver_name: str, method_name: str, grpc_status_code: str, seconds: float
    ) -> None:
        """Record one finished call: `method_name` like "/csi.v1.Controller/CreateVolume"."""


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _outcome_code(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "Canceled"  # Go sees the cancelled context as a Canceled status
    return code_name(error)


class CallInterceptor(_Interceptor):
    """Records and traces every unary CSI call made through the channel it is installed on."""

    def __init__(
        self,
        *,
        driver_name: Callable[[], str],
        recorder: OperationRecorder | None = None,
        max_log_length: int = -1,
    ) -> None:
        self._driver_name = driver_name
        self._recorder = recorder
        self._max_log_length = max_log_length

    def _record(self, method: str, code: str, seconds: float) -> None:
        if self._recorder is None:
            return
        self._recorder.record_csi_operation(
            driver_name=self._driver_name() or UNKNOWN_DRIVER,
            method_name=method,
            grpc_status_code=code,
            seconds=seconds,
        )

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(client_call_details.method)
        trace = enabled(5)
        if trace:
            log.info("GRPC call", method=method, request=Lazy(lambda: strip_secrets(request)), v=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            call = await continuation(client_call_details, request)
            response = await call
        except BaseException as error:
            self._record(method, _outcome_code(error), loop.time() - start)
            if trace:
                log.info("GRPC error", method=method, error=describe(error), v=5)
            raise
        self._record(method, "OK", loop.time() - start)
        if trace:
            max_len = self._max_log_length
            rendered = Lazy(lambda: truncate(strip_secrets(response), max_len))
            log.info("GRPC response", method=method, response=rendered, v=5)
        return response
