"""RBAC against what the chaos soak really asked for: nothing missing; what went unused is reported.

The short soak's request log (every request the API server served, told apart by User-Agent) is
handed to tests/deploy/test_rbac.py's `check` for each controller sidecar: a request the RBAC in
deploy/kubernetes/rbac does not grant fails the test; rules granted (as upstream) but never used are
warnings in pytest's summary. The soak names a Secret in its StorageClasses, so `get` on secrets is
needed too: the one rule upstream ships commented out and our role files document ("add `get` on
secrets if a StorageClass names ... secrets"); it is checked here against that note.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from chaos.shortrun import short_run

from testbed.apiserver import RequestRecord

DEPLOY_TESTS = Path(__file__).resolve().parents[1] / "deploy"
PROGRAMS = ("csi-provisioner", "csi-attacher", "csi-resizer")
SECRET_GET = ("", "secrets", "get")


def rbac_rules() -> ModuleType:
    """tests/deploy/test_rbac.py, where the roles are parsed and `check` lives."""
    name = "chaos_rbac_rules"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DEPLOY_TESTS / "test_rbac.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def records() -> list[RequestRecord]:
    run = short_run()
    assert run.returncode == 0, run.explain()
    return [RequestRecord(**record) for record in run.requests]


def grant(record: RequestRecord) -> tuple[str, str, str]:
    resource = f"{record.resource}/{record.subresource}" if record.subresource else record.resource
    return record.group, resource, record.verb


@pytest.mark.timeout(240)
@pytest.mark.parametrize("program", PROGRAMS)
def test_rbac_grants_every_request_the_soak_made(program: str) -> None:
    rules: Any = rbac_rules()
    mine = [r for r in records() if r.user_agent.startswith(program + "/")]
    secret_gets = [r for r in mine if grant(r) == SECRET_GET]
    assert secret_gets, f"{program} never read the soak's Secret: the check would miss the optional rule"
    role_file = rules.RBAC / rules.FILES[program]
    assert "add `get` on secrets" in role_file.read_text(), f"{role_file.name} does not document the rule"
    others = [r for r in mine if grant(r) != SECRET_GET]
    rules.check(others, program)  # fails on a missing grant, warns about unused ones


@pytest.mark.timeout(240)
def test_the_soak_exercised_each_sidecars_writes() -> None:
    """The comparison means something only if the soak took the write paths."""
    used = {(r.user_agent.split("/", 1)[0], *grant(r)) for r in records() if r.code < 400}
    for needed in [
        ("csi-provisioner", "", "persistentvolumes", "create"),
        ("csi-provisioner", "", "persistentvolumes", "delete"),
        ("csi-provisioner", "", "persistentvolumeclaims", "update"),
        ("csi-attacher", "storage.k8s.io", "volumeattachments/status", "patch"),
        ("csi-attacher", "", "persistentvolumes", "patch"),
        ("csi-resizer", "", "persistentvolumeclaims/status", "patch"),
        ("csi-resizer", "", "persistentvolumes", "patch"),
        ("csi-resizer", "coordination.k8s.io", "leases", "update"),
    ]:
        assert needed in used, needed


@pytest.mark.timeout(240)
def test_node_sidecars_made_no_api_request() -> None:
    agents = {r.user_agent.split("/", 1)[0] for r in records()}
    assert not agents & {"csi-node-driver-registrar", "livenessprobe"}
    assert set(PROGRAMS) <= agents
