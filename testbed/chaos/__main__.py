"""`make chaos`: python -m testbed.chaos [--duration 3m] [--seed N] [--settle 60s] [--v N] [--workdir DIR].

Exit code 0 only when every invariant held; 1 when one was violated; 2 for bad arguments or a test
bed that did not start.
`--print-schedule` prints the seeded schedule and exits (the same seed prints the same lines).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from testbed.chaos.run import Options, soak
from testbed.chaos.schedule import draw

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def duration(text: str) -> float:
    """ "3m", "30s", "90", "1m30s" → seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3m, 30s, 1m30s)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse(argv: list[str]) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="python -m testbed.chaos", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=duration, default=180.0, help="churn and faults for this long (3m)"
    )
    parser.add_argument("--seed", type=int, default=1, help="the schedule's seed (1)")
    parser.add_argument("--settle", type=duration, default=60.0, help="longest wait for convergence (60s)")
    parser.add_argument("--v", type=int, default=2, help="the sidecars' log verbosity (2)")
    parser.add_argument("--churn-rate", type=float, default=2.0, help="churn steps per second (2)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and reports here")
    parser.add_argument("--print-schedule", action="store_true", help="print the schedule and exit")
    args = parser.parse_args(argv)
    options = Options(
        duration=args.duration,
        seed=args.seed,
        settle=args.settle,
        verbosity=args.v,
        churn_rate=args.churn_rate,
        workdir=args.workdir,
    )
    return options, args.print_schedule


def main() -> None:
    options, print_schedule = parse(sys.argv[1:])
    if print_schedule:
        schedule = draw(options.seed, options.duration, churn_rate=options.churn_rate)
        print("\n".join(schedule.lines()))
        print(f"digest {schedule.digest()}")
        return
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
    try:
        sys.exit(asyncio.run(soak(options)))
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as exc:  # the test bed or the sidecars did not start: no verdict
        print(f"chaos soak could not start: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
