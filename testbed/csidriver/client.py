"""Client stubs: the three CSI service stubs over one grpc.aio channel, for tests and tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from proto import csi_pb2_grpc


@dataclass(frozen=True)
class Stubs:
    """Identity, Controller and Node stubs sharing `channel`."""

    channel: grpc.aio.Channel
    identity: Any
    controller: Any
    node: Any


@asynccontextmanager
async def connect(address: str) -> AsyncIterator[Stubs]:
    """Open a channel to `address` ("unix:///path/csi.sock") and close it on exit."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        yield Stubs(
            channel=channel,
            identity=csi_pb2_grpc.IdentityStub(channel),
            controller=csi_pb2_grpc.ControllerStub(channel),
            node=csi_pb2_grpc.NodeStub(channel),
        )
