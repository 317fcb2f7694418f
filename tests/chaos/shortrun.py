"""The short chaos soak (`python -m testbed.chaos --duration=30s`), run once per test session.

`make test` runs it through pytest: tests/chaos judges the soak itself (exit code, invariants, fault
tally, operations), tests/integration/test_security_*.py judge what it left behind (no secret in any
log, event or metric; socket permissions; the API calls against the RBAC). They share one run: the
first test to ask for it pays the ~40 s, the others read its work directory. Import it as
`from chaos.shortrun import short_run` everywhere, so that there is one cache.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SEED = 1
ARGS = ["--duration=30s", f"--seed={SEED}", "--v=10", "--settle=45s"]
"""--v=10: every log line any verbosity can print, so "no secret at --v=5" is covered with margin."""
TIMEOUT = 170.0


@dataclass(frozen=True)
class ShortRun:
    """What the soak printed and left in its work directory."""

    returncode: int
    output: str
    workdir: Path

    @cached_property
    def report(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.workdir / "report.json").read_text())
        return loaded

    @cached_property
    def requests(self) -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = json.loads((self.workdir / "requests.json").read_text())
        return loaded

    @property
    def secret_values(self) -> list[str]:
        return (self.workdir / "secret-values.txt").read_text().split()

    def logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*.log"))}

    def explain(self) -> str:
        """The soak's output, for an assertion message."""
        return f"exit {self.returncode}\n{self.output[-6000:]}"


_run: ShortRun | None = None


def short_run() -> ShortRun:
    """Run the short soak once (later calls return the same result)."""
    global _run
    if _run is None:
        workdir = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "testbed.chaos", *ARGS, f"--workdir={workdir}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        _run = ShortRun(done.returncode, done.stdout + done.stderr, workdir)
    return _run
