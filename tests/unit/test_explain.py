"""The shared explain plumbing (common.explain): the subcommand's command line, the report, event and
finalizer sentences."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common import explain
from common.errors import FlagError
from common.explain import Report
from sidecars.attacher.cli import build_flagset


def test_flags_before_between_and_after_the_words() -> None:
    argv = [
        "--kubeconfig",
        "/k",
        "va",
        "--timeout=3s",
        "va-1",
        "--csi-address",
        "/x.sock",
        "--leader-election",
    ]
    flags, ref = explain.parse(build_flagset(), argv, kind="va", ref="NAME")
    assert ref == "va-1"
    assert flags.string("kubeconfig") == "/k"
    assert flags.duration("timeout") == 3.0
    assert flags.string("csi-address") == "/x.sock"
    assert flags.boolean("leader-election")


def test_double_dash_ends_the_flags() -> None:
    _, ref = explain.parse(build_flagset(), ["va", "--", "-odd-name"], kind="va", ref="NAME")
    assert ref == "-odd-name"


@pytest.mark.parametrize("argv", [[], ["va"], ["pvc", "ns/x"], ["va", "a", "b"]])
def test_wrong_words_show_the_usage(argv: list[str]) -> None:
    with pytest.raises(FlagError, match=r"^usage: csi-attacher explain va NAME \[flags\]"):
        explain.parse(build_flagset(), argv, kind="va", ref="NAME")


def test_unknown_flags_are_still_errors() -> None:
    with pytest.raises(FlagError, match="flag provided but not defined: -nope"):
        explain.parse(build_flagset(), ["va", "x", "--nope"], kind="va", ref="NAME")


def test_help_prints_the_usage_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        explain.parse(build_flagset(), ["--help"], kind="va", ref="NAME")
    assert exit_.value.code == 0
    err = capsys.readouterr().err
    assert err.startswith("usage: csi-attacher explain va NAME [flags]\nUsage of csi-attacher:\n")


def test_references() -> None:
    assert explain.split_ref("default/data", namespaced=True) == ("default", "data")
    assert explain.split_ref("va-1", namespaced=False) == ("", "va-1")
    for ref, namespaced in (("data", True), ("a/b/c", True), ("/x", True), ("ns/x", False)):
        with pytest.raises(FlagError):
            explain.split_ref(ref, namespaced=namespaced)


def test_the_first_decision_is_the_headline() -> None:
    report = Report("VolumeAttachment va-1", "csi-attacher for d")
    report.decide("Waiting: first.")
    report.decide("Would attach: later.")
    report.note("A fact.")
    assert report.render() == "VolumeAttachment va-1 (csi-attacher for d)\n  Waiting: first.\n  - A fact.\n"


def test_ages_and_event_sentences() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert explain.ago("2024-01-01T11:57:00Z", now=now) == "3m ago"
    assert explain.ago("2023-12-30T12:00:00Z", now=now) == "2d ago"
    assert explain.ago("2024-01-01T11:59:59Z", now=now) == "1s ago"
    assert explain.ago("yesterday", now=now) == ""
    event = {"type": "Warning", "reason": "ProvisioningFailed", "message": "no space", "count": 5}
    assert explain.describe_event(event) == "Warning ProvisioningFailed (5 times): no space"


def test_last_warning_unless_superseded() -> None:
    failed = {"type": "Warning", "reason": "ProvisioningFailed", "message": "x"}
    succeeded = {"type": "Normal", "reason": "ProvisioningSucceeded", "message": "y"}
    other = {"type": "Normal", "reason": "ExternalProvisioning", "message": "z"}
    reasons = ("ProvisioningFailed", "ProvisioningSucceeded")
    assert explain.last_warning([failed, other], reasons) is failed
    assert explain.last_warning([failed, succeeded], reasons) is None
    assert explain.last_warning([succeeded, failed], reasons) is failed
    assert explain.last_warning([]) is None


def test_finalizer_owners() -> None:
    assert explain.finalizer_owner("kubernetes.io/pvc-protection").startswith(
        "held by kube-controller-manager's"
    )
    assert explain.finalizer_owner("external-attacher/hostpath-csi-k8s-io") == (
        "held by csi-attacher of hostpath-csi-k8s-io, removed once the volume is detached"
    )
    assert explain.finalizer_owner("csi-sidecars.python/provisioning-intent").startswith(
        "held by csi-provisioner"
    )
    report = Report("x", "y")
    obj = {"metadata": {"finalizers": ["example.com/x"], "deletionTimestamp": "2020-01-01T00:00:00Z"}}
    explain.finalizer_facts(report, obj)
    assert report.facts[0].startswith("It is being deleted (since ")
    assert report.facts[0].endswith("and waits for its finalizers.")
    assert report.facts[1] == (
        "Finalizer example.com/x: not one the Kubernetes storage controllers or CSI sidecars set: whoever "
        "added it removes it."
    )
