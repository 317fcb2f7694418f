"""The short chaos soak passes: every invariant held, every triggered fault recovered, work got done.

The soak itself is `python -m testbed.chaos --duration=30s --seed=1` (see chaos/shortrun.py); these
tests read what it printed and its report.json.
"""

from __future__ import annotations

import re

import pytest
from chaos.shortrun import SEED, short_run

INVARIANTS = (
    "every claim is Bound to a PV whose volume exists",
    "every volume belongs to exactly one PV",
    "nothing is stuck deleting with our finalizers",
    "attachments match running pods and publications",
    "each claim's capacity equals its last request",
    "no sidecar ended in a crash loop",
    "no Lease held by a dead identity past its duration",
)


@pytest.mark.timeout(240)
def test_short_soak_exits_0_with_every_invariant_held() -> None:
    run = short_run()
    assert run.returncode == 0, run.explain()
    report = run.report
    assert report["passed"] is True
    assert [v["name"] for v in report["invariants"]] == list(INVARIANTS)
    for verdict in report["invariants"]:
        assert verdict["held"], (verdict, run.explain())
        assert verdict["figure"]
        assert re.search(rf"held +{re.escape(verdict['name'])}: {re.escape(verdict['figure'])}", run.output)
    assert "result: PASS" in run.output


@pytest.mark.timeout(240)
def test_short_soak_prints_each_fault_progress_and_the_tally() -> None:
    run = short_run()
    faults = run.report["faults"]
    assert len(faults) >= 5, run.explain()
    for fault in faults:
        assert f"fault #{fault['number']} {fault['step']}: " in run.output
    families = {f["kind"].split("-")[0] for f in faults}
    assert families & {"leader", "standby"} and families & {"api", "watches", "watch"}
    assert families & {"csi", "driver"}
    progress = re.findall(r"claim bound \d+, pod running \d+, resize \d+", run.output)
    assert len(progress) >= 5  # one line every 5 s of a 30 s churn
    for row in run.report["tally"]:
        assert re.search(rf"\n  {re.escape(row['kind'])} +{row['injected']} +{row['recovered']} ", run.output)
        assert row["recovered_by"]


@pytest.mark.timeout(240)
def test_every_triggered_fault_recovered_with_evidence() -> None:
    run = short_run()
    for fault in run.report["faults"]:
        if fault["triggered"]:
            assert fault["recovered"] is True, (fault, run.explain())
            assert fault["recovered_by"], fault
        else:
            assert fault["recovered_by"].startswith("not triggered"), fault


@pytest.mark.timeout(240)
def test_the_churn_completed_every_kind_of_operation() -> None:
    run = short_run()
    operations = run.report["operations"]
    completed = operations["completed"]
    for kind in ("claim bound", "pod running", "resize", "pod deleted", "claim deleted"):
        assert completed.get(kind, 0) > 0, (kind, operations)
    assert sum(operations["requested"].values()) + operations["dropped"] == 60  # 30 s at 2 steps/s
    assert operations["refused"] == 0
    assert completed["claim bound"] >= operations["requested"]["create-claim"] - 2


@pytest.mark.timeout(240)
def test_restarts_happened_only_where_the_schedule_killed() -> None:
    run = short_run()
    report = run.report
    assert report["unexpected_exits"] == []
    killed = [f for f in report["faults"] if f["kind"] in ("leader-kill", "standby-term")]
    assert sum(report["restarts"].values()) == len(killed)
    assert report["seed"] == SEED
