"""A process that runs leader election and says when it leads: `leader_child.py KUBECONFIG IDENTITY`.

Used by test_leaderelection.py to kill a real leader process with SIGKILL or stop it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from common import entrypoint
from common.backoff import TokenBucket
from common.kube.client import KubeClient
from common.kube.config import load_cluster_config
from common.leaderelection import LeaderElectionConfig, LeaderElector


async def amain(argv: list[str]) -> int:
    kubeconfig, identity = argv
    client = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig),
        limiter=TokenBucket(math.inf, 1),
        user_agent=identity,
    )
    config = LeaderElectionConfig(
        lock_name="test/lock",
        namespace="default",
        identity=identity,
        lease_duration=2.0,
        renew_deadline=1.5,
        retry_period=0.3,
    )

    async def lead() -> None:
        print("leading", identity, flush=True)
        await asyncio.Event().wait()

    try:
        await LeaderElector(client, config).run(lead)
    finally:
        await client.close()
    return 0


if __name__ == "__main__":
    entrypoint.run("leader-child", amain)
