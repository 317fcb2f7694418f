"""Compatibility tables: every sidecar's flags against the Go defaults, and the metrics we export.

Writes deploy/COMPATIBILITY.md (the README links it) from the code itself: each sidecar's FlagSet
(`sidecars.<name>.cli.build_flagset()`) and the metric families `common.metrics.Metrics` renders.
The Go side is written down here from /work/shared/REFERENCE.md (§0.1 logging, §0.2 standard flags,
§1.1, §2.1, §3.1, §4.1, §5.1) and from the upstream /metrics captures in tests/golden.

    python deploy/compatibility.py            # print the document
    python deploy/compatibility.py --write    # rewrite deploy/COMPATIBILITY.md
    python deploy/compatibility.py --check    # exit 1 if the file is out of date (tests/deploy runs this)
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.flags import FlagSet  # noqa: E402
from common.metrics import Metrics  # noqa: E402

OUTPUT = ROOT / "deploy" / "COMPATIBILITY.md"
GOLDEN = ROOT / "tests" / "golden"

SIDECARS = {
    "csi-provisioner": ("provisioner", "external-provisioner v6.3.0"),
    "csi-attacher": ("attacher", "external-attacher v4.12.0"),
    "csi-resizer": ("resizer", "external-resizer v2.2"),
    "csi-node-driver-registrar": ("registrar", "node-driver-registrar v2.17.0"),
    "livenessprobe": ("livenessprobe", "livenessprobe v2.19.0"),
}

# --- the Go flags and their defaults, as Go's flag package prints them -----------------------------

LOGGING = {  # component-base logsapi, every sidecar (REFERENCE §0.1)
    "v": "0",
    "vmodule": "",
    "logging-format": "text",
    "log-flush-frequency": "5s",
    "log-text-split-stream": "false",
    "log-text-info-buffer-size": "0",
    "log-json-split-stream": "false",
    "log-json-info-buffer-size": "0",
}
STANDARD = {  # csi-lib-utils standardflags: provisioner, attacher, resizer (REFERENCE §0.2)
    "version": "false",
    "kubeconfig": "",
    "csi-address": "/run/csi/socket",
    "leader-election": "false",
    "leader-election-namespace": "",
    "leader-election-lease-duration": "15s",
    "leader-election-renew-deadline": "10s",
    "leader-election-retry-period": "5s",
    "leader-election-labels": "map[]",
    "kube-api-qps": "5",
    "kube-api-burst": "10",
    "http-endpoint": "",
    "metrics-address": "",
    "metrics-path": "/metrics",
    "automaxprocs": "false",
    "feature-gates": "",
}
GO_FLAGS: dict[str, dict[str, str]] = {
    "csi-provisioner": LOGGING
    | STANDARD
    | {
        "master": "",
        "volume-name-prefix": "pvc",
        "volume-name-uuid-length": "-1",
        "retry-interval-start": "1s",
        "retry-interval-max": "5m0s",
        "worker-threads": "100",
        "cloning-protection-threads": "1",
        "snapshot-orphan-sweep-interval": "5m0s",
        "capacity-threads": "1",
        "timeout": "10s",
        "strict-topology": "false",
        "immediate-topology": "true",
        "extra-create-metadata": "false",
        "enable-pprof": "false",
        "default-fstype": "",
        "kube-api-capacity-qps": "1",
        "kube-api-capacity-burst": "5",
        "enable-capacity": "false",
        "capacity-for-immediate-binding": "false",
        "capacity-poll-interval": "1m0s",
        "capacity-ownerref-level": "1",
        "node-deployment": "false",
        "node-deployment-immediate-binding": "true",
        "node-deployment-base-delay": "20s",
        "node-deployment-max-delay": "1m0s",
        "controller-publish-readonly": "false",
        "prevent-volume-mode-conversion": "true",
    },
    "csi-attacher": LOGGING
    | STANDARD
    | {
        "resync": "10m0s",
        "timeout": "15s",
        "retry-interval-start": "1s",
        "retry-interval-max": "5m0s",
        "worker-threads": "10",
        "max-entries": "0",
        "default-fstype": "",
        "reconcile-sync": "1m0s",
        "max-grpc-log-length": "-1",
    },
    "csi-resizer": LOGGING
    | STANDARD
    | {
        "master": "",
        "resync-period": "10m0s",
        "workers": "10",
        "extra-modify-metadata": "false",
        "timeout": "10s",
        "retry-interval-start": "1s",
        "retry-interval-max": "5m0s",
        "handle-volume-inuse-error": "true",
    },
    "csi-node-driver-registrar": LOGGING
    | {
        "csi-address": "/run/csi/socket",
        "kubelet-registration-path": "",
        "plugin-registration-path": "/registration",
        "timeout": "1s",
        "health-port": "0",
        "http-endpoint": "",
        "mode": "",
        "enable-pprof": "false",
        "connection-timeout": "0s",
        "version": "false",
        "automaxprocs": "false",
    },
    "livenessprobe": LOGGING
    | {
        "csi-address": "/run/csi/socket",
        "probe-timeout": "3s",
        "health-port": "9808",
        "http-endpoint": "",
        "metrics-address": "",
        "metrics-path": "/metrics",
        "automaxprocs": "false",
    },
}


def _flags(flagset: FlagSet) -> dict[str, Any]:
    """The FlagSet's flag definitions by name."""
    found: dict[str, Any] = flagset.definitions()
    return found


def _cell(text: str) -> str:
    return f"`{text}`" if text else '`""`'


def flag_table(program: str) -> list[str]:
    package, _ = SIDECARS[program]
    flagset: FlagSet = importlib.import_module(f"sidecars.{package}.cli").build_flagset()
    ours = _flags(flagset)
    go = GO_FLAGS[program]
    lines = [
        "| Flag | Go default | Ours | Status |",
        "|---|---|---|---|",
    ]
    for name in sorted(set(ours) | set(go)):
        flag = ours.get(name)
        if flag is None:
            lines.append(f"| `--{name}` | {_cell(go[name])} | — | **missing: rejected** |")
            continue
        shown = flag.show(flag.default)
        if name not in go:
            status = "python-csi-sidecars only"
        elif not flag.options.get("implemented", True):
            status = "accepted, not implemented (warns)"
        else:
            status = "implemented"
        if flag.options.get("deprecated"):
            status += "; deprecated"
        default = _cell(go[name]) if name in go else "—"
        if name in go and go[name] != shown:
            status += "; **default differs**"
        lines.append(f"| `--{name}` | {default} | {_cell(shown)} | {status} |")
    return lines


# --- metrics ------------------------------------------------------------------------------------------


def _exercised() -> Metrics:
    """A Metrics with one series in every family, so that each family (and its labels) renders."""
    metrics = Metrics()
    metrics.record_csi_operation(driver_name="d", method_name="/m", grpc_status_code="OK", seconds=0)
    metrics.record_csi_reconnect(driver_name="d")
    metrics.workqueue("q").on_add()
    metrics.leader_election("l")(True)
    metrics.record_provisioned(class_name="c", source="", seconds=0)
    metrics.record_provision_failed(class_name="c", source="")
    metrics.record_deleted(class_name="c", seconds=0)
    metrics.record_delete_failed(class_name="c")
    metrics.watch_capacity(lambda: (0, 0, 0))
    return metrics


def our_metrics() -> dict[str, tuple[str, str, list[str]]]:
    """name → (type, help, label names), from the rendered /metrics text."""
    text = _exercised().render()[0].decode()
    found: dict[str, tuple[str, str, list[str]]] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            found[name] = (kind, helps.get(name, ""), [])
        else:
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", line)
            if match:
                base = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
                family = found.get(base) or found.get(match.group(1))
                if family is not None:
                    for key in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2)):
                        if key not in ("le", "quantile") and key not in family[2]:
                            family[2].append(key)
    return found


GOLDEN_METRICS = {
    "csi-provisioner": "09-provisioner-metrics.txt",
    "csi-attacher": "10-attacher-metrics.txt",
    "csi-resizer": "11-resizer-metrics.txt",
    "livenessprobe": "15-livenessprobe-metrics.txt",
}


def upstream_metrics() -> dict[str, set[str]]:
    """program → metric names in upstream's captured /metrics (tests/golden)."""
    return {
        program: set(re.findall(r"^# TYPE (\S+) ", (GOLDEN / file).read_text(), re.MULTILINE))
        for program, file in GOLDEN_METRICS.items()
    }


def metrics_table() -> list[str]:
    upstream = upstream_metrics()
    lines = [
        "| Metric | Type | Labels | In upstream's /metrics of | Help |",
        "|---|---|---|---|---|",
    ]
    for name, (kind, doc, labels) in sorted(our_metrics().items()):
        where = [program for program, names in upstream.items() if name in names]
        shown = ", ".join(where) if where else "— (not in the captures)"
        label_text = ", ".join(f"`{label}`" for label in sorted(labels)) or "—"
        lines.append(f"| `{name}` | {kind} | {label_text} | {shown} | {doc.replace('|', '/')} |")
    return lines


def document() -> str:
    parts = [
        "# Compatibility with the Go sidecars",
        "",
        "Generated by `python deploy/compatibility.py --write` from the flag definitions in",
        "`sidecars/<name>/cli.py` and the metrics in `common/metrics.py`; `tests/deploy` fails when it is",
        "out of date. Go defaults are upstream's, as printed by `--help`.",
        "",
        "Status: *implemented*; *accepted, not implemented* (parsed, a warning is logged when set, no",
        "effect yet); *deprecated* (upstream deprecates it too, a warning is logged); *python-csi-sidecars",
        "only* (not an upstream flag); *missing* (an upstream flag we reject: a deployment passing it fails",
        "to start). Both `-flag` and `--flag` spellings are accepted by every sidecar.",
        "",
    ]
    for program, (_, upstream) in SIDECARS.items():
        parts += [f"## `{program}` (as {upstream})", "", *flag_table(program), ""]
    parts += [
        "## Metrics",
        "",
        "Every metric family our sidecars can export, with upstream's names, types, labels and help",
        "texts. The fourth column says in which upstream sidecar's `/metrics` capture",
        "(`tests/golden/*-metrics.txt`) the family appears; capacity tracking was off in those",
        "captures. csi-node-driver-registrar exports no metrics, upstream or ours. Not reproduced:",
        "Go runtime (`go_*`), `promhttp_*`, component-base's registry metrics and the API server",
        "metrics upstream exports by accident (see `common/metrics.py`).",
        "",
        *metrics_table(),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = document()
    if "--check" in argv:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "COMPATIBILITY.md", "generated", lineterm=""
        )
        print("\n".join(diff))
        print("deploy/COMPATIBILITY.md is out of date: run python deploy/compatibility.py --write")
        return 1
    if "--write" in argv:
        OUTPUT.write_text(text)
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
