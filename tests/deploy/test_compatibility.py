"""The compatibility document: current with the code, and no Go flag rejected or defaulted differently.

deploy/compatibility.py generates deploy/COMPATIBILITY.md from every sidecar's FlagSet and from
common.metrics; it also holds the Go flags and defaults (REFERENCE §0 to §5). A Go flag our parser
rejects would make a deployment written for the Go image fail to start: that fails here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "compatibility.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_compatibility", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_document_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize(
    "program",
    ["csi-provisioner", "csi-attacher", "csi-resizer", "csi-node-driver-registrar", "livenessprobe"],
)
def test_every_go_flag_is_accepted_with_the_go_default(program: str) -> None:
    rows = generator().flag_table(program)[2:]
    assert len(rows) >= len(generator().GO_FLAGS[program])
    for row in rows:
        assert "missing" not in row, f"{program} rejects a Go flag: {row}"
        assert "default differs" not in row, f"{program}: {row}"


def test_metrics_table_lists_upstreams_families() -> None:
    module = generator()
    ours = module.our_metrics()
    for program, names in module.upstream_metrics().items():
        exported = {n for n in names if not n.startswith(("go_", "promhttp_", "apiserver_", "aggregator_"))}
        exported -= {"registered_metrics_total", "disabled_metrics_total", "hidden_metrics_total",
                     "cardinality_enforcement_unexpected_categorizations_total"}  # fmt: skip
        assert exported <= set(ours), f"{program} exports {sorted(exported - set(ours))} that we do not"
    kind, _, labels = ours["csi_sidecar_operations_seconds"]
    assert kind == "histogram" and sorted(labels) == ["driver_name", "grpc_status_code", "method_name"]
