"""Secret parameters and templates: every case upstream accepts, and the ones it rejects, with its texts."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sidecars.provisioner import secrets
from sidecars.provisioner.secrets import SecretError, go_expand, secret_reference

PREFIX = "csi.storage.k8s.io/"


def claim(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "data", "namespace": "team-a", "annotations": annotations or {}}}


def ref(params: dict[str, str], *, op: secrets.SecretParams = secrets.PROVISIONER, **kw: Any) -> Any:
    return secret_reference(op, params, kw.get("pv", "pvc-123"), kw.get("pvc", claim()))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain", "plain"),
        ("${pv.name}", "<pv.name>"),
        ("$pv", "<pv>"),  # $name scans alphanumerics only: "pv", then ".name" stays
        ("a-${pvc.namespace}-b", "a-<pvc.namespace>-b"),
        ("${}x", "x"),  # bad syntax is eaten
        ("${unclosed", "unclosed"),  # "${" eaten
        ("cost$", "cost$"),  # a trailing $ stays
        ("$-x", "<->x"),  # a special variable
        ("${pvc.annotations['a/b']}", "<pvc.annotations['a/b']>"),
    ],
)
def test_go_expand_matches_os_expand(template: str, expected: str) -> None:
    assert go_expand(template, lambda key: f"<{key}>") == expected


def test_no_secret_parameters_means_no_reference() -> None:
    assert ref({"tier": "gold"}) is None


def test_plain_names_and_the_default_pair() -> None:
    params = {PREFIX + "provisioner-secret-name": "s1", PREFIX + "provisioner-secret-namespace": "ns1"}
    assert ref(params) == {"name": "s1", "namespace": "ns1"}
    default = {PREFIX + "secret-name": "d", PREFIX + "secret-namespace": "dns"}
    assert ref(default) == {"name": "d", "namespace": "dns"}
    assert ref(default, op=secrets.NODE_EXPAND) == {"name": "d", "namespace": "dns"}
    # an operation-specific pair wins over the default
    assert ref({**default, **params}) == {"name": "s1", "namespace": "ns1"}


def test_every_template_token() -> None:
    params = {
        PREFIX + "node-publish-secret-name": "${pvc.name}-${pvc.namespace}-${pv.name}"
        "-${pvc.annotations['team/key']}",
        PREFIX + "node-publish-secret-namespace": "${pvc.namespace}",
    }
    got = ref(params, op=secrets.NODE_PUBLISH, pvc=claim({"team/key": "k1"}))
    assert got == {"name": "data-team-a-pvc-123-k1", "namespace": "team-a"}
    ns_from_pv = {PREFIX + "secret-name": "s", PREFIX + "secret-namespace": "${pv.name}"}
    assert ref(ns_from_pv) == {"name": "s", "namespace": "pvc-123"}


def test_missing_annotation_is_an_invalid_token() -> None:
    params = {
        PREFIX + "provisioner-secret-name": "${pvc.annotations['missing']}",
        PREFIX + "provisioner-secret-namespace": "default",
    }
    with pytest.raises(SecretError) as err:
        ref(params)
    assert str(err.value) == (
        "error resolving value \"${pvc.annotations['missing']}\": "
        "invalid tokens: [\"pvc.annotations['missing']\"]"
    )


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("${pvc.name}", 'invalid tokens: ["pvc.name"]'),  # pvc.name is not allowed in the namespace
        ("${pvc.annotations['a']}", "invalid tokens"),
        ("${unknown}", 'invalid tokens: ["unknown"]'),
    ],
)
def test_namespace_templates_only_allow_pv_name_and_pvc_namespace(namespace: str, message: str) -> None:
    params = {PREFIX + "secret-name": "s", PREFIX + "secret-namespace": namespace}
    with pytest.raises(SecretError, match="error resolving value") as err:
        ref(params, pvc=claim({"a": "b"}))
    assert message in str(err.value)


def test_resolved_names_must_be_dns_names() -> None:
    bad_ns = {PREFIX + "secret-name": "s", PREFIX + "secret-namespace": "Bad_NS"}
    with pytest.raises(SecretError) as err:
        ref(bad_ns)
    assert str(err.value) == '"Bad_NS" is not a valid namespace name'
    templated = {PREFIX + "secret-name": "${pvc.annotations['n']}", PREFIX + "secret-namespace": "ns"}
    with pytest.raises(SecretError) as err:
        ref(templated, pvc=claim({"n": "UPPER"}))
    assert (
        str(err.value) == '"${pvc.annotations[\'n\']}" resolved to "UPPER" which is not a valid secret name'
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {PREFIX + "provisioner-secret-name": "s"},
            "failed to get name and namespace template from params: either name and namespace for "
            "Provisioner secrets specified, Both must be specified",
        ),
        (
            {PREFIX + "provisioner-secret-name": "", PREFIX + "provisioner-secret-namespace": "ns"},
            "failed to get name and namespace template from params: Provisioner secrets specified in "
            "parameters but value of either namespace or name is empty",
        ),
        (
            {
                PREFIX + "provisioner-secret-name": "a",
                PREFIX + "provisioner-secret-namespace": "ns",
                "csiProvisionerSecretName": "b",
                "csiProvisionerSecretNamespace": "ns",
            },
            "failed to get name and namespace template from params: Provisioner secrets specified in "
            'parameters with both "csi" and "csi.storage.k8s.io/" keys',
        ),
        (
            {PREFIX + "secret-name": "a"},
            "failed to get default name and namespace template from params: either name and namespace for "
            "Default secrets specified, Both must be specified",
        ),
    ],
)
def test_rejected_parameter_combinations(params: dict[str, str], message: str) -> None:
    with pytest.raises(SecretError) as err:
        ref(params)
    assert str(err.value) == message


def test_deprecated_keys_still_work_for_the_first_four_operations_only() -> None:
    old = {"csiNodeStageSecretName": "s", "csiNodeStageSecretNamespace": "ns"}
    assert ref(old, op=secrets.NODE_STAGE) == {"name": "s", "namespace": "ns"}
    # controller-expand has no deprecated keys: nothing found
    assert ref({"csiControllerExpandSecretName": "s"}, op=secrets.CONTROLLER_EXPAND) is None


def test_decode_data() -> None:
    data = {"data": {"password": base64.b64encode(b"hunter2").decode(), "empty": ""}}
    assert secrets.decode_data(data) == {"password": "hunter2", "empty": ""}
    with pytest.raises(SecretError):
        secrets.decode_data({"data": {"k": "not base64!"}})
