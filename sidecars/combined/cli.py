"""csi-controller-sidecars' command line: the union of csi-provisioner's, csi-attacher's and csi-resizer's.

    csi-controller-sidecars --enable=provisioner,attacher,resizer [the three sidecars' usual flags]

The rules keep every arg list of any of the three containers valid as it is:

* `--enable` (default: all three) names the controllers this process runs.
* Every flag of the three sidecars is accepted with its usual spelling and syntax. Written plainly, a
  flag sets every enabled controller that has it, and a controller keeps its own default for a flag
  not given: `--timeout=30s` sets all three, while without it the provisioner and the resizer use 10s
  and the attacher 15s. `--worker-threads` sets the provisioner (default 100) and the attacher (10);
  the resizer's is `--workers` (10). `--retry-interval-start/-max` set all three.
* `--<controller>-<flag>` (`--attacher-timeout=20s`, `--provisioner-worker-threads=50`,
  `--resizer-leader-election-lease-duration=30s`) sets that controller's flag and replaces the plain
  flag for it, whatever the order (a string map such as `--leader-election-labels` is not merged).
* `--feature-gates`: each gate goes to the enabled controllers that know it (Topology to the
  provisioner, VolumeAttributesClass to the provisioner and the resizer; ReleaseLeaderElectionOnExit,
  AllAlpha, AllBeta and the API server gates to all); a gate none of the three knows is an error.
  `--<controller>-feature-gates` replaces them for that controller and is checked against its gates.
* Process-wide flags configure what the controllers share, so they have no per-controller form
  (`PROCESS_WIDE`): the driver socket and the API client (`--csi-address`, `--kubeconfig`, `--master`,
  `--kube-api-qps`, `--kube-api-burst`: one client, one rate limiter), the HTTP endpoint
  (`--http-endpoint`, `--metrics-address`, `--metrics-path`), logging, `--max-grpc-log-length` (the
  one channel's log), `--version`, `--automaxprocs`, `--debug` and `--once`.
* A flag that only disabled controllers have is accepted and ignored with a warning.

Each controller's config is what its own sidecar parses from its share of the command line
(`controller_args`), so defaults, validation and feature gates cannot drift from the single sidecars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.featuregates import (
    ATTACHER_GATES,
    PROVISIONER_GATES,
    RESIZER_GATES,
    Gate,
    add_feature_gates_flag,
)
from common.flags import Flags, FlagSet
from common.runtime import StandardConfig
from sidecars.attacher import cli as attacher_cli
from sidecars.attacher.cli import AttacherConfig
from sidecars.provisioner import cli as provisioner_cli
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.resizer import cli as resizer_cli
from sidecars.resizer.cli import ResizerConfig

PROGRAM = "csi-controller-sidecars"
CONTROLLERS = ("provisioner", "attacher", "resizer")
FLAGSETS: Mapping[str, Callable[[], FlagSet]] = {
    "provisioner": provisioner_cli.build_flagset,
    "attacher": attacher_cli.build_flagset,
    "resizer": resizer_cli.build_flagset,
}
GATES: Mapping[str, Mapping[str, Gate]] = {
    "provisioner": PROVISIONER_GATES,
    "attacher": ATTACHER_GATES,
    "resizer": RESIZER_GATES,
}
PROCESS_WIDE = frozenset(
    {
        "csi-address",
        "kubeconfig",
        "master",
        "kube-api-qps",
        "kube-api-burst",
        "http-endpoint",
        "metrics-address",
        "metrics-path",
        "max-grpc-log-length",
        "version",
        "automaxprocs",
        "debug",
        "once",
        "v",
        "vmodule",
        "logging-format",
        "log-flush-frequency",
        "log-text-split-stream",
        "log-json-split-stream",
        "log-text-info-buffer-size",
        "log-json-info-buffer-size",
    }
)
"""Flags of what the controllers share: one value for the process, no `--<controller>-` form."""

Token = tuple[str, str | None]
"""One flag of the command line: its name and its text (None: a bare boolean)."""


class Enabled(tuple[str, ...]):
    """The `--enable` value: controller names in the fixed order provisioner, attacher, resizer."""

    __slots__ = ()

    def __str__(self) -> str:
        return ",".join(self)


def parse_enable(text: str, _current: Enabled) -> Enabled:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in CONTROLLERS:
            raise ValueError(f"unknown controller {name!r} (known: {', '.join(CONTROLLERS)})")
    if not names:
        raise ValueError("name at least one controller")
    return Enabled(name for name in CONTROLLERS if name in names)


def _definitions(fs: FlagSet) -> dict[str, Any]:
    """A sidecar's flag definitions by name, to copy into the combined set."""
    return fs.definitions()


def build_flagset() -> FlagSet:
    """`--enable`, the union of the three sidecars' flags, and `--<controller>-<flag>` for each of theirs
    that is not process-wide (see the module docstring)."""
    fs = FlagSet(PROGRAM)
    fs.value(
        "enable",
        Enabled(CONTROLLERS),
        "(python-csi-sidecars only) Comma-separated controllers to run in this process: provisioner, "
        "attacher, resizer.",
        parse_enable,
    )
    add_feature_gates_flag(fs, {**PROVISIONER_GATES, **ATTACHER_GATES, **RESIZER_GATES})
    tables = {controller: _definitions(FLAGSETS[controller]()) for controller in CONTROLLERS}
    plain: dict[str, Any] = {}
    for table in tables.values():
        for name, flag in table.items():
            first = plain.setdefault(name, flag)
            if first.kind != flag.kind:
                raise ValueError(
                    f"flag {name} is a {first.kind} flag in one sidecar, a {flag.kind} in another"
                )
    for name, flag in plain.items():
        if name == "feature-gates":
            continue
        defaults = {c: t[name].show(t[name].default) for c, t in tables.items() if name in t}
        usage = flag.usage
        if len(set(defaults.values())) > 1:
            each = ", ".join(f"{c} {d or '(empty)'}" for c, d in defaults.items())
            usage += f" Default per controller: {each}."
        fs.add(dataclasses.replace(flag, usage=usage))
    for controller, table in tables.items():
        for name, flag in table.items():
            if name not in PROCESS_WIDE:
                usage = f"[{controller} only, replaces -{name} for it] {flag.usage}"
                fs.add(dataclasses.replace(flag, name=f"{controller}-{name}", usage=usage))
    return fs


def tokenize(fs: FlagSet, argv: Sequence[str]) -> list[Token]:
    """The flags of an `argv` that `fs.parse` accepted, each as (name, text), in order."""
    tokens: list[Token] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--" or len(arg) < 2 or arg[0] != "-":
            break
        name, has_value, text = arg.lstrip("-").partition("=")
        if not has_value and fs.takes_value(name):
            has_value, text = "=", args.pop(0)
        tokens.append((name, text if has_value else None))
    return tokens


def _gates_for(text: str, controller: str) -> str:
    """The items of a plain `--feature-gates` value meant for `controller` (see the module docstring)."""
    everyone = {name for gates in GATES.values() for name in gates}
    kept = []
    for item in text.split(","):
        key = item.partition("=")[0].strip()
        if item and (key in GATES[controller] or key not in everyone):
            kept.append(item)
    return ",".join(kept)


def controller_args(tokens: Sequence[Token], controller: str) -> list[str]:
    """`controller`'s own command line: the plain flags it has, its gates, and its prefixed flags
    (which replace the plain ones of the same name)."""
    own = FLAGSETS[controller]()
    prefix = f"{controller}-"
    mine = {name.removeprefix(prefix) for name, _ in tokens if name.startswith(prefix)}
    args = []
    for name, text in tokens:
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
        elif name in mine or not own.defined(name):
            continue
        elif name == "feature-gates":
            text = _gates_for(text or "", controller)
            if not text:
                continue
        args.append(f"--{name}" if text is None else f"--{name}={text}")
    return args


def ignored(tokens: Sequence[Token], enabled: Sequence[str]) -> list[str]:
    """The flags given that no enabled controller has and that are not process-wide."""
    sets = {controller: FLAGSETS[controller]() for controller in CONTROLLERS}
    found = []
    for name, _ in tokens:
        owner = next(
            (c for c in CONTROLLERS if name.startswith(f"{c}-") and sets[c].defined(name[len(c) + 1 :])), None
        )
        if owner is not None:
            used = owner in enabled
        else:
            used = name in PROCESS_WIDE or name == "enable" or any(sets[c].defined(name) for c in enabled)
        if not used:
            found.append(f"--{name}")
    return found


@dataclass(frozen=True, kw_only=True)
class CombinedConfig:
    """What csi-controller-sidecars was told: the process-wide settings and each enabled controller's
    config, as its own sidecar parses it."""

    standard: StandardConfig
    """The process-wide standard flags (driver socket, API client, HTTP endpoint). Its `timeout`, used for
    the shared channel's Probe and capability calls, is the longest of the enabled controllers'."""
    provisioner: ProvisionerConfig | None = None
    """The provisioner's config (`--enable` names it), from its share of the command line."""
    attacher: AttacherConfig | None = None
    """The attacher's config (`--enable` names it), from its share of the command line."""
    resizer: ResizerConfig | None = None
    """The resizer's config (`--enable` names it), from its share of the command line."""
    max_grpc_log_length: int = -1
    """`--max-grpc-log-length` (-1 = no limit), process-wide: caps the one channel's logged responses."""
    ignored: tuple[str, ...] = ()
    """Flags given that no enabled controller uses (logged as warnings)."""

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(c for c in CONTROLLERS if getattr(self, c) is not None)

    @classmethod
    def from_flags(cls, flags: Flags, tokens: Sequence[Token]) -> CombinedConfig:
        """`flags` parsed by `build_flagset()` from an argv, `tokens` that argv's `tokenize`."""
        enabled = flags.value("enable", Enabled)
        configs: dict[str, Any] = {}
        for controller, config_type in (
            ("provisioner", ProvisionerConfig),
            ("attacher", AttacherConfig),
            ("resizer", ResizerConfig),
        ):
            if controller in enabled:
                own = FLAGSETS[controller]().parse(controller_args(tokens, controller))
                configs[controller] = config_type.from_flags(own)
        timeout = max(config.standard.timeout for config in configs.values())
        return cls(
            standard=dataclasses.replace(StandardConfig.from_flags(flags), timeout=timeout),
            max_grpc_log_length=flags.integer("max-grpc-log-length"),
            ignored=tuple(ignored(tokens, enabled)),
            **configs,
        )
