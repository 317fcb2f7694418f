"""The registration service and socket: what kubelet is told, what /healthz says, and the socket's upkeep."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.errors import SidecarError
from proto import pluginregistration_pb2, pluginregistration_pb2_grpc
from sidecars.registrar.controller import (
    NOT_CONFIRMED,
    SOCKET_MISSING,
    Registration,
    RegistrationFailed,
    info_error_verdict,
    info_verdict,
    socket_verdict,
)
from sidecars.registrar.server import RegistrationSocket, get_info, remove_stale_socket

DRIVER = "hostpath.csi.k8s.io"
HOST_ENDPOINT = "/var/lib/kubelet/plugins/csi-hostpath/csi.sock"


def registration() -> Registration:
    return Registration(driver_name=DRIVER, endpoint=HOST_ENDPOINT)


def make_socket_file(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[RegistrationSocket]:
    """A RegistrationSocket serving in tmp_path, looking at its socket every 20 ms."""
    reg_socket = RegistrationSocket(
        str(tmp_path / f"{DRIVER}-reg.sock"), registration(), timeout=1.0, check_interval=0.02
    )
    task = asyncio.create_task(reg_socket.serve(), name="registration server")
    await asyncio.wait_for(reg_socket.listening(), 5)
    try:
        yield reg_socket
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def notify(path: str, *, registered: bool, error: str = "") -> None:
    """What kubelet's plugin watcher does after GetInfo."""
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
        status = pluginregistration_pb2.RegistrationStatus(plugin_registered=registered, error=error)
        await stub.NotifyRegistrationStatus(status, timeout=5)


# --- pure parts -------------------------------------------------------------------------------


def test_get_info_tells_kubelet_type_name_endpoint_and_versions() -> None:
    info = registration().info()
    assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
        "CSIPlugin",
        DRIVER,
        HOST_ENDPOINT,
        ["1.0.0"],
    )


async def test_notify_true_confirms_and_reset_forgets() -> None:
    reg = registration()
    assert not reg.confirmed
    reg.notify(registered=True, error="")
    assert reg.confirmed
    reg.reset()
    assert not reg.confirmed


async def test_notify_false_ends_wait_failed_with_exit_1() -> None:
    reg = registration()
    waiter = asyncio.create_task(reg.wait_failed(), name="wait failed")
    await asyncio.sleep(0)
    assert not waiter.done()
    reg.notify(registered=False, error="plugin name is already registered")
    with pytest.raises(RegistrationFailed, match="plugin name is already registered") as caught:
        await waiter
    assert caught.value.exit_code == 1
    assert not reg.confirmed


def test_socket_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "x-reg.sock"
    assert socket_verdict(str(path), confirmed=True) == (404, SOCKET_MISSING)
    path.write_text("not a socket")
    status, body = socket_verdict(str(path), confirmed=True) or (0, "")
    assert status == 500 and "but it's not a socket" in body
    path.unlink()
    with make_socket_file(path):
        assert socket_verdict(str(path), confirmed=False) == (500, NOT_CONFIRMED)
        assert socket_verdict(str(path), confirmed=True) is None  # go on and dial it


def test_info_verdicts() -> None:
    assert info_verdict(pluginregistration_pb2.PluginInfo(name=DRIVER), driver_name=DRIVER) == (200, "ok")
    assert info_verdict(pluginregistration_pb2.PluginInfo(name="other"), driver_name=DRIVER) == (
        500,
        "invalid driver name other",
    )


def test_info_error_verdict_uses_go_status_text() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="connection refused"
    )
    assert info_error_verdict(error) == (
        500,
        "error getting info from node-registrar socket: "
        "rpc error: code = Unavailable desc = connection refused",
    )


def test_stale_socket_is_removed_but_a_regular_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x-reg.sock"
    remove_stale_socket(str(path))  # nothing there: fine
    make_socket_file(path).close()
    remove_stale_socket(str(path))
    assert not path.exists()
    path.write_text("data")
    with pytest.raises(SidecarError, match="not a socket"):
        remove_stale_socket(str(path))
    assert path.read_text() == "data"


# --- the socket, over real gRPC -----------------------------------------------------------------


async def test_serves_get_info_on_an_owner_only_socket(serving: RegistrationSocket) -> None:
    mode = os.stat(serving.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) & 0o077 == 0  # umask 0077, as upstream on Linux
    info = await get_info(serving.path, timeout=2)
    assert (info.type, info.name, info.endpoint) == ("CSIPlugin", DRIVER, HOST_ENDPOINT)


async def test_healthz_needs_kubelets_confirmation(serving: RegistrationSocket) -> None:
    assert await serving.healthz() == (500, NOT_CONFIRMED)
    await notify(serving.path, registered=True)
    assert serving.registration.confirmed
    assert await serving.healthz() == (200, "ok")


async def test_stale_socket_from_an_earlier_run_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / f"{DRIVER}-reg.sock"
    make_socket_file(path).close()  # left behind by a killed registrar: nobody listens
    reg_socket = RegistrationSocket(str(path), registration(), timeout=1.0, check_interval=0.02)
    task = asyncio.create_task(reg_socket.serve(), name="registration server")
    try:
        await asyncio.wait_for(reg_socket.listening(), 5)
        assert (await get_info(str(path), timeout=2)).name == DRIVER
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_non_socket_file_in_the_way_fails_serve(tmp_path: Path) -> None:
    path = tmp_path / f"{DRIVER}-reg.sock"
    path.write_text("someone's file")
    reg_socket = RegistrationSocket(str(path), registration(), timeout=1.0)
    with pytest.raises(SidecarError, match="not a socket"):
        await reg_socket.serve()
    assert path.read_text() == "someone's file"


async def test_missing_registration_directory_fails_serve(tmp_path: Path) -> None:
    reg_socket = RegistrationSocket(str(tmp_path / "absent" / "x-reg.sock"), registration(), timeout=1.0)
    with pytest.raises(SidecarError, match=r"failed to listen on socket .*: no such directory"):
        await reg_socket.serve()


async def test_deleted_socket_is_recreated_and_must_be_confirmed_again(serving: RegistrationSocket) -> None:
    await notify(serving.path, registered=True)
    assert await serving.healthz() == (200, "ok")
    os.unlink(serving.path)
    assert await serving.healthz() == (404, SOCKET_MISSING)
    for _ in range(250):  # the socket is looked at every 20 ms
        if serving.recreated:
            break
        await asyncio.sleep(0.02)
    await asyncio.wait_for(serving.listening(), 5)
    assert serving.recreated == 1
    assert await serving.healthz() == (500, NOT_CONFIRMED)  # kubelet sees a new socket: a new registration
    assert (await get_info(serving.path, timeout=2)).name == DRIVER
    await notify(serving.path, registered=True)
    assert await serving.healthz() == (200, "ok")


async def test_cancel_removes_the_socket(tmp_path: Path) -> None:
    path = tmp_path / f"{DRIVER}-reg.sock"
    reg_socket = RegistrationSocket(str(path), registration(), timeout=1.0)
    task = asyncio.create_task(reg_socket.serve(), name="registration server")
    await asyncio.wait_for(reg_socket.listening(), 5)
    assert path.exists()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not path.exists()


async def test_healthz_reports_a_socket_nobody_answers_on(tmp_path: Path) -> None:
    path = tmp_path / f"{DRIVER}-reg.sock"
    reg = registration()
    reg.confirmed = True
    reg_socket = RegistrationSocket(str(path), reg, timeout=0.1)
    with make_socket_file(path):  # bound, never listening: connection refused
        status, body = await reg_socket.healthz()
    assert status == 500
    assert body.startswith("error getting info from node-registrar socket: rpc error: code = ")
