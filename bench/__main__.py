"""Run every benchmark in turn: `python -m bench [name ...]` (`make bench`).

Each benchmark is a module of this package with its own `main()` and figures printed on stdout; it
runs in a fresh process so one benchmark's memory never shows in another's RSS figures.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = (
    "apiserver_bench",
    "informer_memory",
    "sidecar_rss",
    "livenessprobe_bench",
    "provisioner_bench",
    "attacher_bench",
    "resizer_bench",
    "combined_bench",
    "capacity_bench",
)


def available() -> list[str]:
    here = Path(__file__).parent
    return [name for name in ORDER if (here / f"{name}.py").exists()]


def main(argv: list[str]) -> int:
    names = argv or available()
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
        print(f"--- bench.{name}: exit {code} in {time.monotonic() - started:.1f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
