"""csi-controller-sidecars' command line: every single sidecar's args stay valid, and the clash rules hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError, FlagError
from sidecars.attacher import cli as attacher_cli
from sidecars.attacher.cli import AttacherConfig
from sidecars.combined.cli import (
    CONTROLLERS,
    PROCESS_WIDE,
    CombinedConfig,
    build_flagset,
    controller_args,
    tokenize,
)
from sidecars.provisioner import cli as provisioner_cli
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.resizer import cli as resizer_cli
from sidecars.resizer.cli import ResizerConfig
from testbed.demo import hostpath_args

SINGLE = {
    "provisioner": (provisioner_cli.build_flagset, ProvisionerConfig),
    "attacher": (attacher_cli.build_flagset, AttacherConfig),
    "resizer": (resizer_cli.build_flagset, ResizerConfig),
}


def parse(*argv: str) -> CombinedConfig:
    fs = build_flagset()
    return CombinedConfig.from_flags(fs.parse(list(argv)), tokenize(fs, list(argv)))


def single(controller: str, argv: list[str]) -> Any:
    """What the single sidecar makes of `argv`."""
    build, config = SINGLE[controller]
    return config.from_flags(build().parse(argv))


def config_of(combined: CombinedConfig, controller: str) -> Any:
    return getattr(combined, controller)


# --- every existing arg list stays valid ---------------------------------------------------------------


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_hostpath_container_args_parse_to_the_single_sidecars_config(controller: str) -> None:
    """csi-driver-host-path's args of each container, given to the combined process (alone and with all
    three enabled), make exactly the config the single sidecar makes of them."""
    args = hostpath_args(Path("/csi/csi.sock"))[controller]
    assert args, "the deployment has args for this container"
    alone = parse(f"--enable={controller}", *args)
    assert alone.enabled == (controller,)
    assert config_of(alone, controller) == single(controller, args)
    everything = parse(*args)
    assert everything.enabled == CONTROLLERS
    assert config_of(everything, controller) == single(controller, args)


def test_the_three_hostpath_containers_merged_into_one_arg_list() -> None:
    containers = hostpath_args(Path("/csi/csi.sock"))
    merged = [arg for controller in CONTROLLERS for arg in containers[controller]]
    combined = parse(*merged)
    for controller in CONTROLLERS:
        assert config_of(combined, controller) == single(controller, containers[controller])
    assert combined.standard.csi_address == "/csi/csi.sock"
    assert combined.ignored == ()


@pytest.mark.parametrize(
    "argv",
    [
        ["-leader-election", "-timeout", "30s", "-worker-threads", "7"],
        ["--leader-election=true", "--timeout=30s", "--worker-threads=7"],
    ],
)
def test_go_flag_syntax_both_spellings(argv: list[str]) -> None:
    combined = parse(*argv)
    assert combined.attacher == single("attacher", argv)
    assert combined.provisioner == single("provisioner", argv)
    assert combined.resizer == single("resizer", ["--leader-election", "--timeout=30s"])


# --- clashing flags -----------------------------------------------------------------------------------


def test_each_controller_keeps_its_own_defaults() -> None:
    combined = parse()
    assert combined.provisioner is not None and combined.attacher is not None and combined.resizer is not None
    assert (
        combined.provisioner.standard.timeout,
        combined.attacher.timeout,
        combined.resizer.standard.timeout,
    ) == (
        10.0,
        15.0,
        10.0,
    )
    assert (
        combined.provisioner.worker_threads,
        combined.attacher.worker_threads,
        combined.resizer.workers,
    ) == (
        100,
        10,
        10,
    )
    assert combined.standard.timeout == 15.0  # the channel's own calls wait as long as the longest


def test_a_plain_flag_sets_every_controller_that_has_it() -> None:
    combined = parse("--timeout=30s", "--worker-threads=7", "--retry-interval-start=2s", "--workers=3")
    assert combined.provisioner is not None and combined.attacher is not None and combined.resizer is not None
    assert {c.standard.timeout for c in (combined.provisioner, combined.attacher, combined.resizer)} == {30.0}
    assert (
        combined.provisioner.worker_threads,
        combined.attacher.worker_threads,
        combined.resizer.workers,
    ) == (
        7,
        7,
        3,
    )
    starts = {c.retry_interval_start for c in (combined.provisioner, combined.attacher, combined.resizer)}
    assert starts == {2.0}


@pytest.mark.parametrize(
    "argv",
    [["--attacher-timeout=20s", "--timeout=30s"], ["--timeout=30s", "--attacher-timeout=20s"]],
)
def test_a_prefixed_flag_overrides_for_its_controller_whatever_the_order(argv: list[str]) -> None:
    combined = parse(*argv)
    assert combined.provisioner is not None and combined.attacher is not None and combined.resizer is not None
    assert combined.attacher.timeout == 20.0
    assert combined.provisioner.standard.timeout == combined.resizer.standard.timeout == 30.0
    assert combined.standard.timeout == 30.0


def test_a_prefixed_map_replaces_the_plain_one() -> None:
    combined = parse("--leader-election-labels=team:storage", "--resizer-leader-election-labels=tier:1")
    assert combined.resizer is not None and combined.attacher is not None
    assert dict(combined.resizer.standard.leader_election_labels) == {"tier": "1"}
    assert dict(combined.attacher.standard.leader_election_labels) == {"team": "storage"}


def test_feature_gates_go_to_the_controllers_that_know_them() -> None:
    combined = parse(
        "--feature-gates=Topology=false,AnnotateFsResize=false,VolumeAttributesClass=false",
        "--feature-gates=ReleaseLeaderElectionOnExit=true",
    )
    assert combined.provisioner is not None and combined.attacher is not None and combined.resizer is not None
    assert not combined.provisioner.topology
    assert not combined.provisioner.volume_attributes_class
    assert not combined.resizer.annotate_fs_resize
    assert not combined.resizer.volume_attributes_class
    assert combined.resizer.volume_attributes_class_explicit
    assert combined.attacher.error_code_on_attach_error  # its default, untouched
    tokens = tokenize(build_flagset(), ["--feature-gates=Topology=false,AnnotateFsResize=false"])
    assert controller_args(tokens, "attacher") == []
    assert controller_args(tokens, "resizer") == ["--feature-gates=AnnotateFsResize=false"]


def test_prefixed_feature_gates_replace_the_plain_ones_for_that_controller() -> None:
    combined = parse(
        "--feature-gates=VolumeAttributesClass=false", "--resizer-feature-gates=AnnotateFsResize=false"
    )
    assert combined.provisioner is not None and combined.resizer is not None
    assert not combined.provisioner.volume_attributes_class
    assert combined.resizer.volume_attributes_class and not combined.resizer.volume_attributes_class_explicit
    assert not combined.resizer.annotate_fs_resize


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--feature-gates=Bogus=true"], "unrecognized feature gate: Bogus"),
        (["--attacher-feature-gates=Topology=true"], "unrecognized feature gate: Topology"),
        (["--attacher-csi-address=/x"], "flag provided but not defined: -attacher-csi-address"),
        (["--resizer-v=3"], "flag provided but not defined: -resizer-v"),
        (["--enable=provisioner,snapshotter"], "unknown controller 'snapshotter'"),
        (["--enable="], "name at least one controller"),
        (["--attacher-timeout=soon"], 'invalid value "soon" for flag -attacher-timeout'),
    ],
)
def test_rejected_command_lines_exit_2(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message) as caught:
        parse(*argv)
    assert caught.value.exit_code == 2


def test_a_single_sidecars_own_checks_still_apply() -> None:
    with pytest.raises(ConfigError, match="worker-threads must be greater than zero"):
        parse("--attacher-worker-threads=0")


# --- enabling a subset ----------------------------------------------------------------------------------


def test_enable_a_subset_and_flags_only_disabled_controllers_have_are_ignored() -> None:
    combined = parse(
        "--enable=resizer,attacher",
        "--volume-name-prefix=vol",
        "--provisioner-worker-threads=5",
        "--master=https://api:6443",
        "--max-grpc-log-length=100",
    )
    assert combined.enabled == ("attacher", "resizer")
    assert combined.provisioner is None
    assert combined.ignored == ("--volume-name-prefix", "--provisioner-worker-threads")
    assert combined.standard.master == "https://api:6443"  # process-wide, though the attacher has no --master
    assert combined.max_grpc_log_length == 100
    assert combined.standard.timeout == 15.0


def test_process_wide_flags_have_no_per_controller_form_and_reach_every_controller() -> None:
    fs = build_flagset()
    for name in PROCESS_WIDE:
        for controller in CONTROLLERS:
            assert not fs.defined(f"{controller}-{name}"), name
    combined = parse("--csi-address=unix:///run/csi.sock", "--kube-api-qps=50", "--http-endpoint=:8080")
    for controller in CONTROLLERS:
        standard = config_of(combined, controller).standard
        assert (standard.csi_address, standard.kube_api_qps, standard.http_endpoint) == (
            "unix:///run/csi.sock",
            50.0,
            ":8080",
        )
    assert combined.standard.kube_api_qps == 50.0


def test_usage_shows_each_controllers_default() -> None:
    usage = build_flagset().usage()
    assert "Default per controller: provisioner 10s, attacher 15s, resizer 10s." in usage
    attacher_timeout = usage.split("  -attacher-timeout duration\n", 1)[1].split("\n  -", 1)[0]
    assert "(default 15s)" in attacher_timeout
    assert "  -enable value" in usage
