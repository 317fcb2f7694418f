"""Feature gates parse like component-base: known gates, AllAlpha/AllBeta, apiserver gates, Go's errors."""

from __future__ import annotations

import pytest

from common.errors import ConfigError, FlagError
from common.featuregates import (
    APISERVER_GATES,
    ATTACHER_GATES,
    PROVISIONER_GATES,
    RESIZER_GATES,
    FeatureGates,
    Gate,
    add_feature_gates_flag,
    feature_gates,
)
from common.flags import FlagSet


def provisioner_gates(*argv: str) -> FeatureGates:
    fs = FlagSet("csi-provisioner")
    add_feature_gates_flag(fs, PROVISIONER_GATES)
    return feature_gates(fs.parse(list(argv)))


@pytest.mark.parametrize(
    ("known", "defaults"),
    [
        (
            PROVISIONER_GATES,
            {
                "Topology": True,
                "CrossNamespaceVolumeDataSource": False,
                "VolumeAttributesClass": True,
                "ReleaseLeaderElectionOnExit": False,
            },
        ),
        (ATTACHER_GATES, {"MutableCSINodeAllocatableCount": True, "ReleaseLeaderElectionOnExit": False}),
        (
            RESIZER_GATES,
            {
                "AnnotateFsResize": True,
                "RecoverVolumeExpansionFailure": True,
                "VolumeAttributesClass": True,
                "ReleaseLeaderElectionOnExit": False,
            },
        ),
    ],
)
def test_defaults_of_each_sidecar(known: dict[str, Gate], defaults: dict[str, bool]) -> None:
    gates = FeatureGates(known)
    assert {name: gates.enabled(name) for name in known} == defaults
    assert not any(gates.explicitly_set(name) for name in known)


def test_settings_from_the_flag() -> None:
    gates = provisioner_gates("--feature-gates=Topology=false,CrossNamespaceVolumeDataSource=true")
    assert not gates.enabled("Topology")
    assert gates.enabled("CrossNamespaceVolumeDataSource")
    assert gates.explicitly_set("Topology")
    assert not gates.explicitly_set("VolumeAttributesClass")


def test_repeated_flags_merge_and_later_wins() -> None:
    gates = provisioner_gates(
        "--feature-gates=Topology=false", "--feature-gates", "Topology=true,AllBeta=true"
    )
    assert gates.enabled("Topology")
    assert str(gates) == "AllBeta=true,Topology=true"


def test_values_use_parsebool_and_spaces_are_trimmed() -> None:
    gates = FeatureGates(PROVISIONER_GATES).with_settings(" Topology = F ,,ReleaseLeaderElectionOnExit=1")
    assert not gates.enabled("Topology")
    assert gates.enabled("ReleaseLeaderElectionOnExit")


def test_all_alpha_turns_on_alpha_gates_but_not_explicit_ones() -> None:
    gates = FeatureGates(PROVISIONER_GATES).with_settings("ReleaseLeaderElectionOnExit=false,AllAlpha=true")
    assert gates.enabled("CrossNamespaceVolumeDataSource")
    assert not gates.enabled("ReleaseLeaderElectionOnExit")
    assert gates.enabled("Topology")  # GA: untouched
    assert not FeatureGates(RESIZER_GATES).with_settings("AllBeta=false").enabled("AnnotateFsResize")


def test_every_apiserver_gate_is_accepted() -> None:
    assert len(APISERVER_GATES) >= 43
    gates = FeatureGates(ATTACHER_GATES).with_settings(",".join(f"{g}=true" for g in APISERVER_GATES))
    assert gates.explicitly_set("WatchList")


def test_an_unknown_gate_is_go_s_error() -> None:
    with pytest.raises(ConfigError, match=r"^unrecognized feature gate: Foo$"):
        FeatureGates(PROVISIONER_GATES).with_settings("Foo=true")
    with pytest.raises(FlagError) as err:
        provisioner_gates("--feature-gates=Topology=true,Foo=true")
    assert (
        str(err.value)
        == 'invalid value "Topology=true,Foo=true" for flag -feature-gates: unrecognized feature gate: Foo'
    )
    assert err.value.exit_code == 2


def test_a_gate_of_another_sidecar_is_unknown() -> None:
    with pytest.raises(ConfigError, match="unrecognized feature gate: AnnotateFsResize"):
        FeatureGates(PROVISIONER_GATES).with_settings("AnnotateFsResize=true")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Topology", "missing bool value for Topology"),
        (
            "Topology=yes",
            'invalid value of Topology=yes, err: strconv.ParseBool: parsing "yes": invalid syntax',
        ),
        ("Topology=", 'invalid value of Topology=, err: strconv.ParseBool: parsing "": invalid syntax'),
    ],
)
def test_bad_values(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        FeatureGates(PROVISIONER_GATES).with_settings(value)
    assert str(err.value) == message


def test_removed_gates_are_tolerated_with_a_warning() -> None:
    # Upstream external-provisioner v6.2+ exits on HonorPVReclaimPolicy; old YAMLs still pass it.
    gates = provisioner_gates("--feature-gates=HonorPVReclaimPolicy=true")
    assert not gates.explicitly_set("HonorPVReclaimPolicy")
    [(message, fields)] = gates.parse_warnings()
    assert message == "ignoring removed feature gate"
    assert fields["gate"] == "HonorPVReclaimPolicy"


def test_setting_a_ga_gate_warns_like_component_base() -> None:
    [(message, fields)] = FeatureGates(PROVISIONER_GATES).with_settings("Topology=true").parse_warnings()
    assert message == "setting GA feature gate; it will be removed in a future release"
    assert fields == {"gate": "Topology", "value": True}


def test_a_locked_gate_cannot_change() -> None:
    known = {"Old": Gate(default=True, stage="GA", locked=True)}
    assert FeatureGates(known).with_settings("Old=true").enabled("Old")
    with pytest.raises(ConfigError, match="cannot set feature gate Old to false, feature is locked to true"):
        FeatureGates(known).with_settings("Old=false")


def test_parsing_never_changes_the_default_object() -> None:
    default = FeatureGates(PROVISIONER_GATES)
    default.with_settings("Topology=false")
    assert default.enabled("Topology")
    assert str(default) == ""


def test_asking_for_an_unregistered_gate_is_a_bug() -> None:
    with pytest.raises(KeyError):
        FeatureGates(ATTACHER_GATES).enabled("Topology")


def test_usage_lists_alpha_and_beta_gates_like_known_features() -> None:
    fs = FlagSet("csi-resizer")
    add_feature_gates_flag(fs, RESIZER_GATES)
    usage = fs.usage()
    assert "AnnotateFsResize=true|false (BETA - default=true)" in usage
    assert "AllAlpha=true|false (ALPHA - default=false)" in usage
    assert "RecoverVolumeExpansionFailure" not in usage  # GA gates are hidden, as upstream
