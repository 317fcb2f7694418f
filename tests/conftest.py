"""Shared pytest configuration: every test must leave no asyncio task running behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.logging import configure


def pytest_configure(config: pytest.Config) -> None:
    """Log like a sidecar at --v=2 (pytest captures it and shows it for failing tests)."""
    configure(verbosity=2, fmt="text", console=False)


@pytest.fixture(autouse=True)
async def _no_pending_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves a task running: a leaked task is a leaked controller."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    for task in leftover:
        task.cancel()
    if leftover:
        await asyncio.gather(*leftover, return_exceptions=True)
        names = sorted(t.get_name() for t in leftover)
        pytest.fail(f"test left tasks running: {names}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Expose each phase's report on the test item (`item.rep_call`) so fixtures can tell a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
