"""Secrets: the StorageClass's `csi.storage.k8s.io/*-secret-*` parameters, their templates, and their data.

external-provisioner's `getSecretReference` and `getCredentials`, same rules and same error texts:

* Each operation (provisioner, controller-publish, node-stage, node-publish, controller-expand,
  node-expand) has a `csi.storage.k8s.io/<op>-secret-name` / `-namespace` pair; the first four also
  honour the deprecated unprefixed `csi<Op>SecretName` / `Namespace` keys (with a warning). When an
  operation names no secret, `csi.storage.k8s.io/secret-name` / `-namespace` is the default. Name
  and namespace must both be given, non-empty, and not in both the old and the new style.
* Values are templates expanded with Go's `os.Expand`: the namespace may use `${pv.name}` and
  `${pvc.namespace}`; the name may also use `${pvc.name}` and `${pvc.annotations['<key>']}`. Any
  other token (or an annotation the claim lacks) is an error ("invalid tokens"). The namespace must
  come out a DNS-1123 label and the name a DNS-1123 subdomain.
* The secret's data is base64-decoded into the `secrets` map of the CSI call.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.govalues import go_quote
from common.kube.client import ApiError, KubeClient
from common.kube.resources import SECRETS
from common.logging import get_logger
from sidecars.provisioner.names import CSI_PARAMETER_PREFIX

log = get_logger(__name__)


class SecretError(Exception):
    """A secret parameter or template upstream rejects, or a secret that cannot be read."""


@dataclass(frozen=True)
class SecretParams:
    """The StorageClass keys naming one operation's secret (upstream `secretParamsMap`)."""

    name: str
    name_key: str
    namespace_key: str
    deprecated_name_key: str = ""
    deprecated_namespace_key: str = ""


def _params(op: str, prefixed: str, deprecated: str = "") -> SecretParams:
    old = (f"csi{deprecated}SecretName", f"csi{deprecated}SecretNamespace") if deprecated else ("", "")
    return SecretParams(
        op,
        f"{CSI_PARAMETER_PREFIX}{prefixed}-name",
        f"{CSI_PARAMETER_PREFIX}{prefixed}-namespace",
        *old,
    )


DEFAULT = _params("Default", "secret")
PROVISIONER = _params("Provisioner", "provisioner-secret", "Provisioner")
CONTROLLER_PUBLISH = _params("ControllerPublish", "controller-publish-secret", "ControllerPublish")
NODE_STAGE = _params("NodeStage", "node-stage-secret", "NodeStage")
NODE_PUBLISH = _params("NodePublish", "node-publish-secret", "NodePublish")
CONTROLLER_EXPAND = _params("ControllerExpand", "controller-expand-secret")
NODE_EXPAND = _params("NodeExpand", "node-expand-secret")

PV_SECRET_REFS: tuple[tuple[str, SecretParams], ...] = (
    ("controllerPublishSecretRef", CONTROLLER_PUBLISH),
    ("nodeStageSecretRef", NODE_STAGE),
    ("nodePublishSecretRef", NODE_PUBLISH),
    ("controllerExpandSecretRef", CONTROLLER_EXPAND),
    ("nodeExpandSecretRef", NODE_EXPAND),
)
"""The `spec.csi` secret references of a provisioned PV and the parameters they come from."""

# Every `csi.storage.k8s.io/` key external-provisioner knows; any other such key is an error.
KNOWN_PREFIXED_KEYS = frozenset(
    [CSI_PARAMETER_PREFIX + "fstype"]
    + [key for _, p in PV_SECRET_REFS for key in (p.name_key, p.namespace_key)]
    + [key for p in (DEFAULT, PROVISIONER) for key in (p.name_key, p.namespace_key)]
)


def warn_deprecated(old: str, new: str) -> None:
    """upstream `deprecationWarning`, as a structured line naming both parameters."""
    log.warning(
        "StorageClass parameter is deprecated and will be removed in a future release", old=old, new=new
    )


def templates(params: SecretParams, sc_params: Mapping[str, str]) -> tuple[str, str]:
    """`verifyAndGetSecretNameAndNamespaceTemplate`: (name, namespace) templates, ("", "") if none."""
    name = namespace = ""
    names = namespaces = 0
    if params.deprecated_name_key and params.deprecated_name_key in sc_params:
        name, names = sc_params[params.deprecated_name_key], names + 1
        warn_deprecated(params.deprecated_name_key, params.name_key)
    if params.deprecated_namespace_key and params.deprecated_namespace_key in sc_params:
        namespace, namespaces = sc_params[params.deprecated_namespace_key], namespaces + 1
        warn_deprecated(params.deprecated_namespace_key, params.namespace_key)
    if params.name_key in sc_params:
        name, names = sc_params[params.name_key], names + 1
    if params.namespace_key in sc_params:
        namespace, namespaces = sc_params[params.namespace_key], namespaces + 1
    if names > 1 or namespaces > 1:
        raise SecretError(
            f'{params.name} secrets specified in parameters with both "csi" and "{CSI_PARAMETER_PREFIX}" keys'
        )
    if names != namespaces:
        raise SecretError(
            f"either name and namespace for {params.name} secrets specified, Both must be specified"
        )
    if names == 1 and (not name or not namespace):
        raise SecretError(
            f"{params.name} secrets specified in parameters but value of either namespace or name is empty"
        )
    return name, namespace


# --- Go's os.Expand ----------------------------------------------------------------------------------

_SPECIAL = frozenset("*#$@!?-0123456789")


def _is_alnum(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def _shell_name(s: str) -> tuple[str, int]:
    """Go's `getShellName`: the variable name after a `$` and how many characters it used."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1:2], 3
        for i in range(1, len(s)):
            if s[i] == "}":
                if i == 1:
                    return "", 2  # bad syntax: eat "${}"
                return s[1:i], i + 1
        return "", 1  # bad syntax: eat "${"
    if s[0] in _SPECIAL:
        return s[0:1], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def go_expand(s: str, mapping: Callable[[str], str]) -> str:
    """Go's `os.Expand`: replace `${var}` and `$var` by `mapping(var)`."""
    out: list[str] = []
    i = j = 0
    changed = False
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            changed = True
            out.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if name == "" and width > 0:
                pass  # invalid syntax: the characters are eaten
            elif name == "":
                out.append(s[j])  # a "$" not followed by a name stays
            else:
                out.append(mapping(name))
            j += width
            i = j + 1
        j += 1
    if not changed:
        return s
    return "".join(out) + s[i:]


def resolve_template(template: str, params: Mapping[str, str]) -> str:
    """upstream `resolveTemplate`: expand, and fail naming every token `params` does not have."""
    missing: set[str] = set()

    def lookup(key: str) -> str:
        if key not in params:
            missing.add(key)
            return ""
        return params[key]

    resolved = go_expand(template, lookup)
    if missing:
        tokens = " ".join(go_quote(token) for token in sorted(missing))
        raise SecretError(f"invalid tokens: [{tokens}]")
    return resolved


_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and _LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and _SUBDOMAIN.fullmatch(value) is not None


def secret_reference(
    params: SecretParams, sc_params: Mapping[str, str], pv_name: str, claim: Mapping[str, Any] | None
) -> dict[str, str] | None:
    """`getSecretReference`: `{"name", "namespace"}` of the secret for this operation, or None."""
    try:
        name_tpl, namespace_tpl = templates(params, sc_params)
    except SecretError as err:
        raise SecretError(f"failed to get name and namespace template from params: {err}") from None
    if not name_tpl and not namespace_tpl:
        try:
            name_tpl, namespace_tpl = templates(DEFAULT, sc_params)
        except SecretError as err:
            raise SecretError(
                f"failed to get default name and namespace template from params: {err}"
            ) from None
    if not name_tpl and not namespace_tpl:
        return None
    meta = (claim or {}).get("metadata") or {}
    namespace_params = {"pv.name": pv_name}
    name_params = {"pv.name": pv_name}
    if claim is not None:
        namespace_params["pvc.namespace"] = str(meta.get("namespace", ""))
        name_params["pvc.name"] = str(meta.get("name", ""))
        name_params["pvc.namespace"] = str(meta.get("namespace", ""))
        for key, value in (meta.get("annotations") or {}).items():
            name_params[f"pvc.annotations['{key}']"] = value
    namespace = _resolve(namespace_tpl, namespace_params)
    if not is_dns1123_label(namespace):
        if namespace_tpl != namespace:
            raise SecretError(
                f"{go_quote(namespace_tpl)} resolved to {go_quote(namespace)} "
                "which is not a valid namespace name"
            )
        raise SecretError(f"{go_quote(namespace_tpl)} is not a valid namespace name")
    name = _resolve(name_tpl, name_params)
    if not is_dns1123_subdomain(name):
        if name_tpl != name:
            raise SecretError(
                f"{go_quote(name_tpl)} resolved to {go_quote(name)} which is not a valid secret name"
            )
        raise SecretError(f"{go_quote(name_tpl)} is not a valid secret name")
    return {"name": name, "namespace": namespace}


def _resolve(template: str, params: Mapping[str, str]) -> str:
    try:
        return resolve_template(template, params)
    except SecretError as err:
        raise SecretError(f"error resolving value {go_quote(template)}: {err}") from None


def decode_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's `data`, base64-decoded (CSI secrets are UTF-8 strings)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise SecretError(f"key {key} of the secret is not base64-encoded UTF-8: {err}") from None
    return out


async def credentials(kube: KubeClient, ref: Mapping[str, str] | None) -> dict[str, str] | None:
    """`getCredentials`: the data of the referenced secret (None without a reference)."""
    if ref is None:
        return None
    name, namespace = ref["name"], ref["namespace"]
    try:
        secret = await kube.get(SECRETS, name, namespace=namespace)
        return decode_data(secret)
    except (ApiError, SecretError) as err:
        raise SecretError(f"error getting secret {name} in namespace {namespace}: {err}") from None
