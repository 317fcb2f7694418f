"""What a soak prints: the progress line, the invariants with their figures, the fault tally, the operations.

Pure formatting of what the other modules recorded, plus `as_json` for the machine-readable report
(`report.json` in the work directory), which tests and the closing note read.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from testbed.chaos.churn import Churn
from testbed.chaos.fleet import Fleet
from testbed.chaos.invariants import Verdict
from testbed.chaos.observe import Snapshot
from testbed.chaos.records import MECHANISM, FaultRecord
from testbed.chaos.schedule import FaultKind, Schedule

Obj = dict[str, Any]
OPERATIONS = ("claim bound", "pod running", "resize", "pod deleted", "claim deleted")


def progress(churn: Churn, faults: Sequence[FaultRecord], fleet: Fleet, snap: Snapshot | None) -> str:
    done = churn.done
    ops = ", ".join(f"{name} {done[name]}" for name in OPERATIONS)
    recovered = sum(1 for f in faults if f.recovered)
    line = f"{ops} | faults {len(faults)} ({recovered} recovered) | restarts {sum(fleet.restarts().values())}"
    if snap is not None:
        holders = ", ".join(
            f"{c}={((lease or {}).get('spec') or {}).get('holderIdentity') or '-'}"
            for c, lease in snap.leases.items()
        )
        line += f" | claims {len(snap.claims)}, driver volumes {len(snap.driver_volumes)} | leaders {holders}"
    if churn.waiting:
        line += f" | waiting steps {len(churn.waiting)}"
    return line


def fault_lines(faults: Sequence[FaultRecord]) -> list[str]:
    lines = []
    for fault in faults:
        state = (
            "recovered" if fault.recovered else "not triggered" if not fault.triggered else "NOT RECOVERED"
        )
        took = f" in {fault.seconds:.1f}s" if fault.recovered and fault.seconds is not None else ""
        lines.append(f"  #{fault.number:<3} {fault.step.describe()}: {fault.detail}")
        lines.append(f"       {state}{took}: {fault.recovered_by}")
    return lines


def verdict_lines(verdicts: Iterable[Verdict]) -> list[str]:
    lines = []
    for verdict in verdicts:
        mark = "held    " if verdict.held else "VIOLATED"
        lines.append(f"  {mark} {verdict.name}: {verdict.figure}")
        lines.extend(f"           - {problem}" for problem in verdict.problems)
    return lines


def tally(faults: Sequence[FaultRecord]) -> list[Obj]:
    """Per fault kind: injected, recovered, not triggered, not recovered, recovery seconds, mechanism."""
    rows = []
    for kind in FaultKind:
        mine = [f for f in faults if f.kind is kind]
        if not mine:
            continue
        seconds = [f.seconds for f in mine if f.recovered and f.seconds is not None]
        rows.append(
            {
                "kind": str(kind),
                "injected": len(mine),
                "recovered": sum(1 for f in mine if f.recovered),
                "not_triggered": sum(1 for f in mine if not f.triggered),
                "not_recovered": sum(1 for f in mine if f.triggered and not f.recovered),
                "median_seconds": round(statistics.median(seconds), 1) if seconds else None,
                "max_seconds": round(max(seconds), 1) if seconds else None,
                "recovered_by": _hows(mine) or MECHANISM[kind],
            }
        )
    return rows


def _hows(faults: Sequence[FaultRecord]) -> str:
    hows = Counter(f.how for f in faults if f.recovered and f.how)
    return "; ".join(f"{how} x{n}" for how, n in hows.most_common())


def tally_lines(rows: Sequence[Obj]) -> list[str]:
    lines = [
        f"  {'kind':<18} {'injected':>8} {'recovered':>9} {'untriggered':>11} "
        f"{'median/max s':>13}  recovered by"
    ]
    for row in rows:
        times = f"{row['median_seconds']}/{row['max_seconds']}" if row["median_seconds"] is not None else "-"
        bad = f"  ({row['not_recovered']} NOT RECOVERED)" if row["not_recovered"] else ""
        lines.append(
            f"  {row['kind']:<18} {row['injected']:>8} {row['recovered']:>9} {row['not_triggered']:>11} "
            f"{times:>13}  {row['recovered_by']}{bad}"
        )
    return lines


def operation_lines(churn: Churn) -> list[str]:
    requested: Counter[str] = churn.requested
    lines = [
        f"  steps performed: {sum(requested.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(requested.items()))})"
    ]
    lines.append(f"  completed: {', '.join(f'{name} {churn.done[name]}' for name in OPERATIONS)}")
    lines.append(
        f"  steps dropped (precondition never met): {churn.dropped}, refused by the API: {churn.failed}"
    )
    return lines


def as_json(
    *,
    schedule: Schedule,
    verdicts: Sequence[Verdict],
    faults: Sequence[FaultRecord],
    churn: Churn,
    fleet: Fleet,
    settle_seconds: float,
    workdir: str,
) -> Obj:
    return {
        "seed": schedule.seed,
        "duration": schedule.duration,
        "schedule_digest": schedule.digest(),
        "passed": all(v.held for v in verdicts),
        "invariants": [v.as_dict() for v in verdicts],
        "faults": [
            {
                "number": f.number,
                "at": round(f.injected_at, 3),
                "kind": str(f.kind),
                "step": f.step.describe(),
                "detail": f.detail,
                "recovered": f.recovered,
                "triggered": f.triggered,
                "recovered_by": f.recovered_by,
                "seconds": None if f.seconds is None else round(f.seconds, 2),
            }
            for f in faults
        ],
        "tally": tally(faults),
        "operations": {
            "requested": dict(churn.requested),
            "completed": dict(churn.done),
            "dropped": churn.dropped,
            "refused": churn.failed,
        },
        "restarts": fleet.restarts(),
        "unexpected_exits": [
            {"name": e.name, "code": e.code, "log": e.last_lines} for e in fleet.unexpected()
        ],
        "settle_seconds": round(settle_seconds, 1),
        "workdir": workdir,
    }
