"""What the benchmarks measure: a process's memory and CPU time from /proc, a client's API calls from the
test-bed API server's request log, and the small arithmetic on top."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A memory figure of process `pid` from /proc (VmRSS: resident now; VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def api_calls(url: str, agent: str) -> dict[str, int]:
    """Requests so far by clients whose user agent starts with `agent`, by "verb resource[/sub]" (watch
    streams left out), from the test-bed API server's request log at `url`."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/testbed/requests?records=false") as rsp,
    ):
        body = await rsp.json()
    counts: dict[str, int] = {}
    for user_agent, rows in body["byUserAgent"].items():
        if user_agent.startswith(agent):
            for row in rows:
                key = f"{row['verb']} {row['resource']}" + (
                    f"/{row['subresource']}" if row["subresource"] else ""
                )
                counts[key] = counts.get(key, 0) + row["count"]
    return {k: v for k, v in counts.items() if not k.startswith("watch")}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counts that changed from `before` to `after`, by how much."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted `values`, nearest rank."""
    return values[min(len(values) - 1, int(len(values) * q))]
