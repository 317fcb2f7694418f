"""Liveness probing: each /healthz is one Identity.Probe on a channel that all requests share.

Answers, as upstream: 200 `ok` when the driver is ready (an unset `ready` counts as ready); 500
`driver responded but is not ready`; 500 with Go's status text (`rpc error: code = ... desc = ...`)
when the call fails or `--probe-timeout` passes. The timeout covers reaching the driver too
(`wait_for_ready`): a driver that is restarting gets that long to come back, as upstream's
per-request dial does.

Upstream dials a fresh connection per request (the source of its connection leak,
livenessprobe#91). Here one channel serves every request, concurrent ones included, and still
follows the driver:

* a driver that restarted (socket closed and recreated) is redialled by gRPC itself, at most 1 s
  apart, and the next probe waits for it;
* a driver that accepted the connection but did not answer in time may be hung on that connection
  only (e.g. an old process still holding it while a new one serves the socket), so a timed-out
  probe retires the channel: later probes use a new one, and the old one is closed when its last
  in-flight probe ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from common.csi import CSIConnection, OperationRecorder, describe, status_code
from common.logging import get_logger
from proto import csi_pb2

log = get_logger(__name__)

NOT_READY = "driver responded but is not ready"
"""The 500 body when Probe answered `ready: false` (upstream's text)."""
_GO_DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
RESEND_AFTER = 0.05
"""Seconds before a probe the transport lost is sent again (while the probe timeout allows)."""

Verdict = tuple[int, str]


def probe_verdict(response: Any) -> Verdict:
    """The answer for a ProbeResponse: 200 unless `ready` is present and false."""
    if response.HasField("ready") and not response.ready.value:
        return 500, NOT_READY
    return 200, "ok"


def error_verdict(error: BaseException) -> Verdict:
    """The answer for a failed Probe: Go's status text (our own deadline as Go's context words it)."""
    if status_code(error) is grpc.StatusCode.DEADLINE_EXCEEDED:
        details = getattr(error, "details", None)
        if callable(details) and details() in (None, "", "Deadline Exceeded"):
            return 500, _GO_DEADLINE
    return 500, describe(error)


@dataclass(eq=False)
class _Link:
    """One channel to the driver and the probes in flight on it."""

    conn: CSIConnection
    in_flight: int = 0
    retired: bool = False


class Prober:
    """Probes the driver for /healthz over a shared channel (see the module docstring)."""

    def __init__(
        self, conn: CSIConnection, *, timeout: float, recorder: OperationRecorder | None = None
    ) -> None:
        """`conn` has answered GetPluginInfo already (its `driver_name` labels the Probe metrics)."""
        self.address = conn.address
        self.driver_name = conn.driver_name
        self.timeout = timeout
        """`--probe-timeout`, seconds."""
        self.redials = 0
        """How many times a channel was retired after a probe timed out."""
        self._recorder = recorder
        self._link = _Link(conn)
        self._retired: list[_Link] = []

    async def healthz(self) -> Verdict:
        """One probe of the driver: the /healthz status and body."""
        link = self._link
        link.in_flight += 1
        try:
            log.info("Sending probe request to CSI driver", driver=self.driver_name, v=5)
            response = await self._probe(link)
        except grpc.RpcError as error:
            if status_code(error) is grpc.StatusCode.DEADLINE_EXCEEDED:
                self._retire(link)
            verdict = error_verdict(error)
            log.error("Health check failed", driver=self.driver_name, error=verdict[1])
            return verdict
        finally:
            link.in_flight -= 1
            if link.retired and link.in_flight == 0 and link in self._retired:
                self._retired.remove(link)
                await asyncio.shield(link.conn.close())
        verdict = probe_verdict(response)
        if verdict[0] == 200:
            log.info("Health check succeeded", driver=self.driver_name, v=5)
        else:
            log.error("Driver responded but is not ready", driver=self.driver_name)
        return verdict

    async def _probe(self, link: _Link) -> Any:
        """Probe within `--probe-timeout`. A call the transport lost mid-flight (UNAVAILABLE and the
        channel no longer READY: the driver went away with our request on the wire) is sent again while
        time is left, so a driver that restarts within the timeout answers, as it would to upstream's
        fresh dial. An UNAVAILABLE the driver itself answered (channel still READY) is its verdict."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                return await link.conn.identity.Probe(
                    csi_pb2.ProbeRequest(), timeout=max(deadline - loop.time(), 0.001), wait_for_ready=True
                )
            except grpc.RpcError as error:
                lost = status_code(error) is grpc.StatusCode.UNAVAILABLE and not link.conn.connected
                if not lost or deadline - loop.time() < RESEND_AFTER:
                    raise
            await asyncio.sleep(RESEND_AFTER)

    def _retire(self, link: _Link) -> None:
        """Stop using `link` for new probes (once: concurrent timeouts share one redial)."""
        if link is not self._link:
            return
        link.retired = True
        self._retired.append(link)
        conn = CSIConnection(self.address, call_timeout=None, recorder=self._recorder)
        conn.driver_name = self.driver_name
        self._link = _Link(conn)
        self.redials += 1
        log.warning("CSI driver did not answer in time, using a new channel", address=self.address)

    async def close(self) -> None:
        """Close the channel and any retired one still in use; in-flight probes fail with Cancelled."""
        links, self._retired = [self._link, *self._retired], []
        for link in links:
            await link.conn.close()
