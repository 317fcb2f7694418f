"""Feature gates: `--feature-gates=A=true,B=false` parsed like k8s component-base `featuregate`.

Each sidecar knows its own gates (`PROVISIONER_GATES`, `ATTACHER_GATES`, `RESIZER_GATES`). Like
upstream, which imports `k8s.io/apiserver` and so "knows" its gates, the apiserver gate names
(`APISERVER_GATES`) and `AllAlpha`/`AllBeta` are accepted too; the apiserver gates change nothing here.

Differences from upstream, on purpose:
* Gates a sidecar has removed (`REMOVED_GATES`, e.g. `HonorPVReclaimPolicy`, removed in
  external-provisioner v6.2) are fatal upstream ("unrecognized feature gate"), which breaks old
  YAMLs on upgrade. We accept them with a warning instead; any other unknown gate is still an error.
* `AllAlpha`/`AllBeta` never override a gate set explicitly, whatever the order (in Go the outcome
  depends on map iteration order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from common.errors import ConfigError
from common.flags import Flags, FlagSet
from common.govalues import go_quote, parse_bool

Stage = Literal["ALPHA", "BETA", "GA", "DEPRECATED"]


@dataclass(frozen=True)
class Gate:
    """One known feature gate: its default and maturity (component-base `FeatureSpec`)."""

    default: bool
    stage: Stage
    locked: bool = False
    """LockToDefault: setting the gate to anything but its default is an error."""


_RELEASE_LEADER_ELECTION = Gate(default=False, stage="ALPHA")

PROVISIONER_GATES: Mapping[str, Gate] = {
    "Topology": Gate(default=True, stage="GA"),
    "CrossNamespaceVolumeDataSource": Gate(default=False, stage="ALPHA"),
    "VolumeAttributesClass": Gate(default=True, stage="GA"),
    "ReleaseLeaderElectionOnExit": _RELEASE_LEADER_ELECTION,
}
ATTACHER_GATES: Mapping[str, Gate] = {
    "MutableCSINodeAllocatableCount": Gate(default=True, stage="GA"),
    "ReleaseLeaderElectionOnExit": _RELEASE_LEADER_ELECTION,
}
RESIZER_GATES: Mapping[str, Gate] = {
    "AnnotateFsResize": Gate(default=True, stage="BETA"),
    "RecoverVolumeExpansionFailure": Gate(default=True, stage="GA"),
    "VolumeAttributesClass": Gate(default=True, stage="GA"),
    "ReleaseLeaderElectionOnExit": _RELEASE_LEADER_ELECTION,
}

# k8s.io/apiserver pkg/features/kube_features.go (the 1.35 list and the newer master list, merged) plus
# component-base zpages gates: registered in the sidecars' default gate because they import the apiserver.
APISERVER_GATES: tuple[str, ...] = (
    "APIResponseCompression",
    "APIServerIdentity",
    "APIServerTracing",
    "APIServingWithRoutine",
    "AggregatedDiscoveryRemoveBetaType",
    "AllowParsingUserUIDFromCertAuth",
    "AllowUnsafeMalformedObjectDeletion",
    "AnonymousAuthConfigurableEndpoints",
    "AuthorizeWithSelectors",
    "BtreeWatchCache",
    "CBORServingAndStorage",
    "ComponentFlagz",
    "ComponentStatusz",
    "ConcurrentWatchObjectDecode",
    "ConsistentListFromCache",
    "ConsistentListFromCacheSkipTimeoutFallback",
    "ConstrainedImpersonation",
    "CoordinatedLeaderElection",
    "DeclarativeValidation",
    "DeclarativeValidationBeta",
    "DeclarativeValidationTakeover",
    "DetectCacheInconsistency",
    "KMSv1",
    "ListFromCacheSnapshot",
    "ManifestBasedAdmissionControlConfig",
    "MutatingAdmissionPolicy",
    "OpenAPIEnums",
    "RemoteRequestHeaderUID",
    "ResilientWatchCacheInitialization",
    "RetryGenerateName",
    "SeparateCacheWatchRPC",
    "ShardedListAndWatch",
    "SizeBasedListCostEstimate",
    "StorageVersionAPI",
    "StorageVersionHash",
    "StreamingCollectionEncodingToJSON",
    "StreamingCollectionEncodingToProtobuf",
    "StructuredAuthenticationConfiguration",
    "StructuredAuthenticationConfigurationEgressSelector",
    "StructuredAuthenticationConfigurationJWKSMetrics",
    "StructuredAuthorizationConfiguration",
    "TokenRequestServiceAccountUIDValidation",
    "UnauthenticatedHTTP2DOSMitigation",
    "UnknownVersionInteroperabilityProxy",
    "WatchCacheInitializationPostStartHook",
    "WatchFromStorageWithoutResourceVersion",
    "WatchList",
)

# Gates the sidecars used to know and removed; fatal upstream, tolerated here (see the module docstring).
REMOVED_GATES: Mapping[str, str] = {
    "HonorPVReclaimPolicy": "removed in external-provisioner v6.2; the behaviour is always on",
}

_SPECIAL = {"AllAlpha": "ALPHA", "AllBeta": "BETA"}

ParseWarning = tuple[str, dict[str, Any]]


class FeatureGates:
    """The gates of one sidecar: known gates with defaults, plus what the command line set.

    Immutable: `with_settings` returns a new FeatureGates, so a parsed value never leaks into a default.
    """

    def __init__(
        self,
        known: Mapping[str, Gate],
        *,
        accepted: Iterable[str] = APISERVER_GATES,
        removed: Mapping[str, str] = REMOVED_GATES,
    ) -> None:
        self._known = dict(known)
        self._accepted = frozenset(accepted)
        self._removed = dict(removed)
        self._explicit: dict[str, bool] = {}
        self._warnings: list[ParseWarning] = []

    def with_settings(self, value: str) -> FeatureGates:
        """Parse `A=true,B=false` (component-base `Set`) on top of earlier settings. Raises ConfigError."""
        settings: dict[str, bool] = {}
        for item in value.split(","):
            if not item:
                continue
            key, has_value, text = item.partition("=")
            key = key.strip()
            if not has_value:
                raise ConfigError(f"missing bool value for {key}")
            try:
                settings[key] = parse_bool(text.strip())
            except ValueError:
                detail = f"strconv.ParseBool: parsing {go_quote(text.strip())}: invalid syntax"
                raise ConfigError(f"invalid value of {key}={text.strip()}, err: {detail}") from None
        return self.with_map(settings)

    def with_map(self, settings: Mapping[str, bool]) -> FeatureGates:
        """Apply explicit settings (component-base `SetFromMap`). Raises ConfigError for unknown gates."""
        new = FeatureGates(self._known, accepted=self._accepted, removed=self._removed)
        new._explicit = dict(self._explicit)
        new._warnings = list(self._warnings)
        for key, enabled in settings.items():
            gate = self._known.get(key)
            if gate is None and key in self._removed:
                new._warnings.append(
                    (
                        "ignoring removed feature gate",
                        {"gate": key, "value": enabled, "note": self._removed[key]},
                    )
                )
                continue
            if gate is None and key not in _SPECIAL and key not in self._accepted:
                raise ConfigError(f"unrecognized feature gate: {key}")
            if gate is not None and gate.locked and enabled != gate.default:
                raise ConfigError(
                    f"cannot set feature gate {key} to {str(enabled).lower()}, "
                    f"feature is locked to {str(gate.default).lower()}"
                )
            if gate is not None and gate.stage in ("GA", "DEPRECATED"):
                message = f"setting {gate.stage} feature gate; it will be removed in a future release"
                new._warnings.append((message, {"gate": key, "value": enabled}))
            new._explicit[key] = enabled
        return new

    def enabled(self, name: str) -> bool:
        """Whether gate `name` is on: set explicitly, else via AllAlpha/AllBeta, else its default."""
        gate = self._known.get(name)
        if gate is None:
            raise KeyError(f"feature {name!r} is not registered in this sidecar's feature gates")
        if name in self._explicit:
            return self._explicit[name]
        for special, stage in _SPECIAL.items():
            if gate.stage == stage and special in self._explicit:
                return self._explicit[special]
        return gate.default

    def explicitly_set(self, name: str) -> bool:
        """Whether the command line named gate `name` (e.g. VolumeAttributesClass auto-disable)."""
        return name in self._explicit

    def parse_warnings(self) -> Sequence[ParseWarning]:
        """Warnings found while parsing, logged by `Flags.warn_unimplemented()` once logging is set up."""
        return tuple(self._warnings)

    def known_features(self) -> list[str]:
        """component-base `KnownFeatures`: `Name=true|false (STAGE - default=x)`, GA and deprecated hidden."""
        lines = [f"{name}=true|false ({stage} - default=false)" for name, stage in _SPECIAL.items()]
        for name, gate in self._known.items():
            if gate.stage not in ("GA", "DEPRECATED"):
                lines.append(f"{name}=true|false ({gate.stage} - default={str(gate.default).lower()})")
        return sorted(lines)

    def __str__(self) -> str:
        return ",".join(f"{k}={str(v).lower()}" for k, v in sorted(self._explicit.items()))


def add_feature_gates_flag(fs: FlagSet, known: Mapping[str, Gate]) -> None:
    """Define `--feature-gates`; repeated occurrences merge, like upstream."""
    default = FeatureGates(known)
    usage = (
        "A set of key=value pairs that describe feature gates for alpha/experimental features. Options are:\n"
    )
    fs.value(
        "feature-gates",
        default,
        usage + "\n".join(default.known_features()),
        lambda text, g: g.with_settings(text),
    )


def feature_gates(flags: Flags) -> FeatureGates:
    """The parsed `--feature-gates` value."""
    return flags.value("feature-gates", FeatureGates)
