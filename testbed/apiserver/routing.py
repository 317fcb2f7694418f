"""Request routing: from a URL path and method to what kube-apiserver calls the request info.

Resource paths are `/api/v1[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]` and
`/apis/{group}/{version}[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]`; everything under
`/api` and `/apis` that is not a resource is discovery. The verb is the authorization verb: get, list,
watch, create, update, patch, delete, deletecollection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from testbed.apiserver import errors
from testbed.apiserver.resources import Registry, ResourceType

_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class RequestInfo:
    """A parsed API request. `rtype` is None for discovery and other non-resource paths."""

    verb: str
    path: str
    rtype: ResourceType | None = None
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    discovery: tuple[str, ...] = ()
    """For non-resource API paths: ("api",), ("api", "v1"), ("apis",), ("apis", group[, version])."""

    @property
    def resource(self) -> str:
        """The resource as RBAC names it (`persistentvolumeclaims`), "" for non-resource requests."""
        return self.rtype.plural if self.rtype else ""

    @property
    def group(self) -> str:
        return self.rtype.group if self.rtype else ""


_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def _verb(method: str, *, named: bool, watch: bool) -> str:
    """The request's verb; MethodNotAllowed (405) for a method the path does not take."""
    if method in ("GET", "HEAD"):
        return "get" if named else ("watch" if watch else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    if method not in _METHOD_VERBS or (method == "POST") == named:
        raise errors.method_not_allowed()
    return _METHOD_VERBS[method]


def is_watch(query: Mapping[str, str]) -> bool:
    return query.get("watch", "").lower() in ("true", "1")


def parse(method: str, path: str, query: Mapping[str, str], registry: Registry) -> RequestInfo:
    """Route an API request; NotFound (the generic 404 page, golden case 46) for unknown paths."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        raise errors.resource_not_found()
    if parts[0] == "api":
        if len(parts) == 1 or (len(parts) == 2 and parts[1] == "v1"):
            return RequestInfo("get", path, discovery=tuple(parts))
        if parts[1] != "v1":
            raise errors.resource_not_found()
        group, version, rest = "", "v1", parts[2:]
    else:
        if len(parts) <= 3:
            return RequestInfo("get", path, discovery=tuple(parts))
        group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    core_namespace_object = group == "" and len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES
    if rest[0] == "namespaces" and len(rest) >= 3 and not core_namespace_object:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise errors.resource_not_found()
    rtype = registry.lookup(group, version, rest[0])
    if rtype is None or (namespace and not rtype.namespaced):
        raise errors.resource_not_found()
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and subresource not in rtype.subresources:
        raise errors.resource_not_found()
    if rtype.namespaced and name and not namespace:
        raise errors.resource_not_found()
    verb = _verb(method, named=bool(name), watch=is_watch(query))
    return RequestInfo(verb, path, rtype, namespace, name, subresource)
