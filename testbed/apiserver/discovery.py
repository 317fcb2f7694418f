"""Discovery documents: `/version`, `/api`, `/apis`, the resource lists, and a minimal OpenAPI v3.

The documents list only what this server serves, each entry as the real server writes it (golden
cases 0-6). The OpenAPI v3 documents hold just what kubectl reads before `create`/`apply`: one PATCH
operation per kind, tagged with its group-version-kind and the `fieldValidation` query parameter, so
kubectl leaves validation to the server. Strategic merge patch is deliberately not advertised there,
which makes `kubectl apply` compute its patch from its built-in types, as it does without OpenAPI.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from testbed.apiserver.resources import Registry, ResourceType

Obj = dict[str, Any]

VERSION: Obj = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": "v1.36.2",
    "gitCommit": "98b35193b2ac7a23a673325f5e9b830ecd5ba406",
    "gitTreeState": "clean",
    "buildDate": "1970-01-01T00:00:00Z",
    "goVersion": "go1.27.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}
"""The kube-apiserver this test bed stands in for (golden case 0)."""


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_entry(group: str, versions: list[str]) -> Obj:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def _versions(registry: Registry, group: str) -> list[str]:
    return [v for g, v in registry.group_versions() if g == group]


def api_group_list(registry: Registry) -> Obj:
    groups: list[Obj] = []
    for group, _ in registry.group_versions():
        if not groups or groups[-1]["name"] != group:
            groups.append(_group_entry(group, _versions(registry, group)))
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> Obj | None:
    versions = _versions(registry, group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1"} | _group_entry(group, versions)


def resource_list(registry: Registry, group: str, version: str) -> Obj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    entries = sorted((e for r in types for e in r.discovery()), key=lambda e: str(e["name"]))
    head: Obj = {"kind": "APIResourceList"}
    if group:
        head["apiVersion"] = "v1"
    return head | {"groupVersion": f"{group}/{version}" if group else version, "resources": entries}


def _openapi_path(rtype: ResourceType) -> str:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else "/api/v1"
    scope = "/namespaces/{namespace}" if rtype.namespaced else ""
    return f"{prefix}{scope}/{rtype.plural}/{{name}}"


def _patch_operation(rtype: ResourceType) -> Obj:
    schema: Obj = {"schema": {"type": "object"}}
    query = ["dryRun", "fieldManager", "fieldValidation", "force"]
    return {
        "operationId": f"patch{rtype.kind}",
        "parameters": [
            {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in query
        ],
        "requestBody": {
            "content": {"application/json-patch+json": schema, "application/merge-patch+json": schema},
            "required": True,
        },
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {
            "group": rtype.group,
            "version": rtype.version,
            "kind": rtype.kind,
        },
    }


def openapi_v3_document(registry: Registry, group: str, version: str) -> Obj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths = {_openapi_path(r): {"patch": _patch_operation(r)} for r in types}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
        "paths": paths,
    }


def openapi_v3_root(registry: Registry) -> Obj:
    paths: Obj = {}
    for group, version in [("", "v1"), *registry.group_versions()]:
        key = f"apis/{group}/{version}" if group else "api/v1"
        document = openapi_v3_document(registry, group, version)
        digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}
