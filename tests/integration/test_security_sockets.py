"""Unix sockets the sidecars create are not usable by other users, whatever the process umask.

Only csi-node-driver-registrar creates a socket (`<plugin-registration-path>/<driver>-reg.sock`);
it binds it under umask 0077, as upstream does on Linux. This runs it with umask 0 — the most
permissive a container could give it — and checks the socket, also after it had to be recreated,
and every socket the chaos soak's sidecars left in its work directory.
"""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from chaos.shortrun import short_run
from kit import ROOT, eventually

from testbed.csidriver import TestDriver

REG_SOCKET = "hostpath.csi.k8s.io-reg.sock"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def umask(pid: int) -> int:
    """A running process's umask (Linux /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc")


async def test_registration_socket_is_private_even_under_umask_0(
    driver: TestDriver, socket_dir: Path, tmp_path: Path
) -> None:
    registration = socket_dir / "registry"
    registration.mkdir()
    log = tmp_path / "registrar.log"
    argv = [
        sys.executable,
        "-m",
        "sidecars.registrar",
        f"--csi-address={driver.address}",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/hostpath/csi.sock",
        f"--plugin-registration-path={registration}",
        "--v=5",
    ]
    with open(log, "wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, umask=0
        )
    try:
        socket = registration / REG_SOCKET
        await eventually(socket.exists, timeout=20, message="the registration socket")
        assert stat.S_ISSOCK(socket.lstat().st_mode)
        assert mode(socket) & 0o077 == 0, oct(mode(socket))
        socket.unlink()  # someone removed it: the registrar binds a new one, under the same umask
        await eventually(socket.exists, timeout=20, message="the recreated registration socket")
        assert "recreating it" in log.read_text()
        assert mode(socket) & 0o077 == 0, oct(mode(socket))
        assert umask(process.pid) == 0  # the process umask really is 0 (and was put back after each bind)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0, log.read_text()[-3000:]
    assert not (registration / REG_SOCKET).exists()


@pytest.mark.timeout(240)
def test_no_socket_left_by_the_soaks_sidecars_is_group_or_world_writable() -> None:
    run = short_run()
    assert run.returncode == 0, run.explain()
    sockets = run.report["sockets"]
    ours = {path: int(bits, 8) for path, bits in sockets.items() if path.startswith("plugins_registry/")}
    assert list(ours) == [f"plugins_registry/{REG_SOCKET}"], sockets
    for path, bits in ours.items():
        assert bits & 0o077 == 0, (path, oct(bits))
    assert "csi.sock" in sockets  # the test driver's own socket (not ours): listed, not judged
