"""Secrets never leak: not in any log at any --v, not in events, not in metrics, not in the soak's output.

The short chaos soak (chaos/shortrun.py) names a Secret for every CSI operation that takes one in both
of its StorageClasses (provisioner, controller-publish, controller-expand, node-stage, node-publish,
node-expand) and runs every sidecar at --v=10, so every request with secrets is logged (stripped).
Then its whole output is searched for the Secret's values.
"""

from __future__ import annotations

import base64
import json

import pytest
from chaos.shortrun import ShortRun, short_run


def haystacks(run: ShortRun) -> dict[str, str]:
    texts = {f"logs/{name}": text for name, text in run.logs().items()}
    texts["soak output"] = run.output
    texts["events.json"] = (run.workdir / "events.json").read_text()
    texts["requests.json"] = (run.workdir / "requests.json").read_text()
    for metrics in sorted((run.workdir / "metrics").glob("*.txt")):
        texts[f"metrics/{metrics.name}"] = metrics.read_text()
    return texts


@pytest.mark.timeout(240)
def test_the_soak_used_secrets_in_every_csi_call_that_takes_them() -> None:
    """Without this the absence below would prove nothing: the secrets did reach the sidecars' requests."""
    run = short_run()
    assert run.returncode == 0, run.explain()
    logs = "\n".join(run.logs().values())
    for method in ("CreateVolume", "ControllerPublishVolume", "ControllerExpandVolume", "DeleteVolume"):
        calls = [
            line for line in logs.splitlines() if f'"GRPC call" method="/csi.v1.Controller/{method}' in line
        ]
        assert calls, method
        assert all('\\"secrets\\":\\"***stripped***\\"' in line for line in calls), (method, calls[0])
    assert len(run.secret_values) == 2
    assert len(run.logs()) == 10  # 2 x 3 controller replicas, registrar, livenessprobe, driver, control plane


@pytest.mark.timeout(240)
def test_no_secret_value_in_any_log_event_metric_or_output() -> None:
    run = short_run()
    assert run.returncode == 0, run.explain()
    texts = haystacks(run)
    assert len([name for name in texts if name.startswith("metrics/")]) == 8
    assert json.loads(texts["events.json"]), "the soak recorded no events"
    for value in run.secret_values:
        encoded = base64.b64encode(value.encode()).decode()
        for name, text in texts.items():
            assert value not in text, f"secret value found in {name}"
            assert encoded not in text, f"base64 of a secret value found in {name}"
