"""`make demo` runs end to end, exits 0, and leaves no process or socket behind (also on Ctrl-C)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kit import ROOT

STEPS = (
    "node-driver-registrar registers the driver with kubelet",
    "livenessprobe answers /healthz",
    "csi-provisioner provisions a volume and the PV controller binds it",
    "attach-detach controller asks, csi-attacher attaches",
    "csi-resizer expands the volume (ControllerExpandVolume)",
    "kubelet finishes the file system resize (NodeExpandVolume)",
    "csi-attacher detaches, the VolumeAttachment goes",
    "csi-provisioner deletes the volume (DeleteVolume) and the PV",
)


def processes_in(workdir: str) -> list[str]:
    """Command lines of live processes that mention the demo's work directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if workdir in cmdline:
            found.append(cmdline)
    return found


def workdir_of(output: str) -> str:
    match = re.search(r"on (/tmp/csi-testbed-[^/]+)/csi\.sock", output)
    assert match, output
    return match.group(1)


def test_demo_walks_the_life_of_a_volume() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "testbed.demo"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    for step in STEPS:
        assert f"{step}" in output, step
        assert re.search(rf"^{re.escape(step)}\s+\d+\.\d\d$", output, re.MULTILINE), f"summary row: {step}"
    assert "ProvisioningSucceeded" in output or "Provisioning" in output
    assert '"non_zero_exits": {}' in output
    workdir = workdir_of(output)
    assert not Path(workdir).exists()
    assert processes_in(workdir) == []


def test_ctrl_c_stops_everything() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "testbed.demo", "--keep"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        lines.append(line)
        if "Still running" in line or not line:
            break
    output = "".join(lines)
    assert "Still running" in output, output
    workdir = workdir_of(output)
    assert processes_in(workdir)  # everything is up while the demo is kept running
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode in (0, 130), rest
    assert processes_in(workdir) == []
    assert not list(Path(workdir).glob("**/*.sock"))
