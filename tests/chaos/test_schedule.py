"""The seeded schedule: the same seed gives the same steps; every fault family shows up; churn is steady."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from chaos.shortrun import ROOT

from testbed.chaos.__main__ import duration
from testbed.chaos.schedule import FAMILIES, ChurnAction, FaultKind, draw


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_same_seed_same_schedule(seed: int) -> None:
    first, second = draw(seed, 180.0), draw(seed, 180.0)
    assert first == second
    assert list(first.lines()) == list(second.lines())
    assert first.digest() == second.digest()


def test_different_seeds_differ() -> None:
    assert len({draw(seed, 180.0).digest() for seed in range(1, 7)}) == 6


def test_a_three_minute_run_sees_every_fault_kind_and_every_churn_action() -> None:
    for seed in range(1, 7):
        schedule = draw(seed, 180.0)
        kinds = Counter(f.kind for f in schedule.faults)
        assert set(kinds) == set(FaultKind), (seed, kinds)
        assert set(Counter(c.action for c in schedule.churn)) == set(ChurnAction)
        assert all(3.0 <= f.at < 175.0 for f in schedule.faults)


def test_a_short_run_sees_each_fault_family() -> None:
    for seed in range(1, 20):
        kinds = {f.kind for f in draw(seed, 30.0).faults}
        for family, cards in FAMILIES.items():
            assert kinds & {kind for kind, _ in cards}, (seed, family)


def test_churn_is_steady_and_names_claims_it_created() -> None:
    schedule = draw(7, 60.0, churn_rate=2.0)
    assert [c.at for c in schedule.churn] == [i / 2 for i in range(120)]
    created: set[str] = set()
    for step in schedule.churn:
        if step.action is ChurnAction.CREATE_CLAIM:
            assert step.claim not in created
            assert step.size_mi > 0 and step.binding
            created.add(step.claim)
        else:
            assert step.claim in created
    live = len(created) - sum(1 for c in schedule.churn if c.action is ChurnAction.DELETE_CLAIM)
    assert 0 < live <= 16


def test_resizes_only_grow() -> None:
    sizes: dict[str, int] = {}
    for step in draw(3, 180.0).churn:
        if step.action in (ChurnAction.CREATE_CLAIM, ChurnAction.RESIZE):
            assert step.size_mi > sizes.get(step.claim, 0)
            sizes[step.claim] = step.size_mi


@pytest.mark.parametrize(("text", "seconds"), [("3m", 180.0), ("30s", 30.0), ("1m30s", 90.0), ("45", 45.0)])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_print_schedule_is_repeatable_from_the_command_line() -> None:
    def printed(seed: int) -> str:
        argv = [sys.executable, "-m", "testbed.chaos", "--duration=30s", f"--seed={seed}", "--print-schedule"]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout

    assert printed(4) == printed(4)
    assert printed(4) != printed(5)
    assert f"digest {draw(4, 30.0).digest()}" in printed(4)
