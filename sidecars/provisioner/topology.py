"""Topology: CreateVolume's accessibility requirements from CSINodes and Nodes, and the PV's node affinity.

external-provisioner's `pkg/controller/topology.go`, read from the informer caches:

* Topology keys come from the selected node's CSINode (delayed binding) or from a random CSINode
  that has keys for the driver (immediate binding). Every Node carrying all those labels contributes
  its values ("aggregated" topology). StorageClass `allowedTopologies` are flattened instead (an OR
  of values under an AND of keys becomes a cross product).
* `--strict-topology` (delayed binding): requisite = preferred = the selected node's segment, which
  must lie within allowedTopologies.
* Requisite terms are sorted (shorter first, then by key and value) and de-duplicated. Preferred is
  requisite rotated so that the selected node's segment is first, or, without a selected node, by
  FNV-1 (32 bit) of the claim name; a name ending in `-<int>` hashes the part before that (only its
  last dash-separated word) and adds the index (StatefulSet spreading).
* `--immediate-topology=false` with immediate binding and no allowedTopologies: no requirements.
* Per claim UID, the keys, node labels and aggregated terms are cached (`TopologyCache`), so a
  CreateVolume retried after a timeout sends identical requirements even if nodes change meanwhile.

Errors keep upstream's texts; a missing CSINode for the selected node is `not_found`, which the
caller turns into a reschedule.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Term = tuple[tuple[str, str], ...]
"""A topology segment as sorted (key, value) pairs: all of them must hold (AND)."""


class TopologyError(Exception):
    """Accessibility requirements cannot be computed; `not_found`: the selected CSINode is missing."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass
class _Entry:
    keys: list[str] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    node_labels: dict[str, str] = field(default_factory=dict)


class TopologyCache:
    """Per claim UID: topology keys, aggregated terms and selected-node labels (upstream pvcNodeStore)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def get(self, uid: str) -> _Entry:
        return self._entries.get(uid) or _Entry()

    def _entry(self, uid: str) -> _Entry:
        return self._entries.setdefault(uid, _Entry())

    def update_keys(self, uid: str, keys: list[str]) -> None:
        self._entry(uid).keys = list(keys)

    def update_terms(self, uid: str, terms: list[Term]) -> None:
        self._entry(uid).terms = list(terms)

    def update_node_labels(self, uid: str, labels: Mapping[str, str]) -> None:
        self._entry(uid).node_labels = dict(labels)

    def delete(self, uid: str) -> None:
        self._entries.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class Lookup(Protocol):
    """Objects by name: a dict, or an informer cache through an adapter."""

    def get(self, name: str) -> Any: ...

    def values(self) -> Iterable[Any]: ...


class NodeView:
    """What the topology code reads: CSINodes and Nodes by name."""

    def __init__(self, csinodes: Lookup, nodes: Lookup) -> None:
        self.csinodes = csinodes
        self.nodes = nodes


# --- Go formatting helpers (error texts) -----------------------------------------------------------


def _go_list(items: Iterable[str]) -> str:
    return "[" + " ".join(items) + "]"


def _go_term(term: Term) -> str:
    return _go_list(f"{{{k} {v}}}" for k, v in term)


# --- terms -----------------------------------------------------------------------------------------


def make_term(segments: Mapping[str, str]) -> Term:
    return tuple(sorted(segments.items()))


def _order(term: Term) -> tuple[int, Term]:
    """upstream `topologyTerm.compare`: shorter terms first, then by key and value."""
    return len(term), term


def subset(term: Term, other: Term) -> bool:
    """upstream `topologyTerm.subset`: every segment of `term` is in `other` (both sorted)."""
    if not term:
        return True
    j = 0
    for key, value in other:
        k1, v1 = term[j]
        if k1 != key:
            continue
        if v1 != value:
            return False
        j += 1
        if j == len(term):
            return True
    return False


def flatten(allowed_topologies: Sequence[Mapping[str, Any]]) -> list[Term]:
    """upstream `flatten`: distribute the OR of values over the AND of label requirements."""
    final: list[Term] = []
    for selector_term in allowed_topologies:
        old: list[list[tuple[str, str]]] = []
        for expression in selector_term.get("matchLabelExpressions") or []:
            key = str(expression.get("key", ""))
            new: list[list[tuple[str, str]]] = []
            for value in expression.get("values") or []:
                if not old:
                    new.append([(key, str(value))])
                else:
                    new.extend([*term, (key, str(value))] for term in old)
            old = new
        final.extend(tuple(sorted(term)) for term in old)
    return final


def topology_keys(csinode: Mapping[str, Any], driver: str) -> list[str]:
    for entry in (csinode.get("spec") or {}).get("drivers") or []:
        if entry.get("name") == driver:
            return list(entry.get("topologyKeys") or [])
    return []


def term_from_labels(labels: Mapping[str, str], keys: Sequence[str]) -> Term | None:
    """The node's segment for `keys`, or None when a key is missing from its labels."""
    if any(key not in labels for key in keys):
        return None
    return tuple(sorted((key, labels[key]) for key in keys))


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def fnv1_32(data: bytes) -> int:
    """Go's `hash/fnv.New32` (FNV-1, not FNV-1a)."""
    value = 0x811C9DC5
    for byte in data:
        value = (value * 0x01000193) & 0xFFFFFFFF
        value ^= byte
    return value


def _parse_uint32(text: str) -> int | None:
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= 0xFFFFFFFF else None


def name_hash_and_index(pvc_name: str) -> tuple[int, int]:
    """upstream `getPVCNameHashAndIndexOffset` (the StatefulSet spreading heuristic)."""
    if not pvc_name:
        return random.getrandbits(32), 0
    hash_string, index = pvc_name, 0
    dash = pvc_name.rfind("-")
    if dash != -1:
        parsed = _parse_uint32(pvc_name[dash + 1 :])
        if parsed is not None:
            index = parsed
            hash_string = pvc_name[:dash]
            inner = hash_string.rfind("-")
            if inner != -1:
                hash_string = hash_string[inner + 1 :]
    return fnv1_32(hash_string.encode()), index


def _to_csi(terms: Iterable[Term]) -> list[dict[str, str]]:
    return [dict(term) for term in terms if term]


# --- the requirement -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TopologyRequest:
    """The claim-side inputs of `accessibility_requirements`."""

    driver: str
    pvc_uid: str
    pvc_name: str
    allowed_topologies: Sequence[Mapping[str, Any]] = ()
    selected_node: str = ""
    strict: bool = False
    immediate: bool = True


def _keys_of_selected(req: TopologyRequest, view: NodeView, cache: TopologyCache) -> list[str]:
    cached = cache.get(req.pvc_uid).keys
    if cached:
        return cached
    csinode = view.csinodes.get(req.selected_node)
    if csinode is None:
        raise TopologyError(
            f"failed to get selected CSINode {req.selected_node}: "
            f'csinode.storage.k8s.io "{req.selected_node}" not found',
            not_found=True,
        )
    keys = topology_keys(csinode, req.driver)
    if keys:
        cache.update_keys(req.pvc_uid, keys)
    return keys


def _selected_term(req: TopologyRequest, keys: list[str], view: NodeView, cache: TopologyCache) -> Term:
    """upstream `getTopologyFromNodeName` (its error always shows `map[]`: the labels are dropped)."""
    labels: Mapping[str, str] = cache.get(req.pvc_uid).node_labels
    if not labels:
        node = view.nodes.get(req.selected_node)
        labels = _labels(node) if node is not None else {}
        if labels:
            cache.update_node_labels(req.pvc_uid, labels)
    term = term_from_labels(labels, keys) if labels else None
    if term is None:
        raise TopologyError(
            "topology labels from selected node map[] does not match topology keys from CSINode "
            + _go_list(keys)
        )
    return term


def _aggregate(req: TopologyRequest, keys: list[str], view: NodeView, cache: TopologyCache) -> list[Term]:
    """upstream `aggregateTopologies`."""
    if not req.selected_node:
        keys = cache.get(req.pvc_uid).keys
        if not keys:
            csinodes = list(view.csinodes.values())
            random.shuffle(csinodes)
            for csinode in csinodes:
                found = topology_keys(csinode, req.driver)
                if found:
                    keys = found
                    cache.update_keys(req.pvc_uid, keys)
                    break
        if not keys:
            return []  # the driver has registered no topology keys on any node yet
    elif not keys:
        raise TopologyError(f"no topology key found on CSINode {req.selected_node}")
    terms = list(cache.get(req.pvc_uid).terms)
    if terms:
        return terms
    for node in view.nodes.values():
        term = term_from_labels(_labels(node), keys)
        if term:
            terms.append(term)
    if not terms:
        raise TopologyError(f"topologyKeys {_go_list(keys)} were not found on any nodes")
    cache.update_terms(req.pvc_uid, terms)
    return list(terms)


def accessibility_requirements(
    req: TopologyRequest, view: NodeView, cache: TopologyCache
) -> dict[str, list[dict[str, str]]] | None:
    """upstream `GenerateAccessibilityRequirements`: `{"requisite": [...], "preferred": [...]}` or None."""
    selected: Term = ()
    keys: list[str] = []
    requisite: list[Term] = []
    if req.selected_node:
        keys = _keys_of_selected(req, view, cache)
        if not keys:
            raise TopologyError(f"no topology key found for node {req.selected_node}")
        selected = _selected_term(req, keys, view, cache)
        if req.strict:
            if req.allowed_topologies:
                allowed = flatten(req.allowed_topologies)
                if not any(subset(term, selected) for term in allowed):
                    shown = _go_list(_go_term(t) for t in allowed)
                    raise TopologyError(
                        f"selected node '\"{req.selected_node}\"' topology '{_go_term(selected)}' is not in "
                        f"allowed topologies: {shown}"
                    )
            requisite.append(selected)
    if not requisite:
        if req.allowed_topologies:
            requisite = flatten(req.allowed_topologies)
        else:
            if not req.selected_node and not req.immediate:
                return None
            requisite = _aggregate(req, keys, view, cache)
            if not requisite:
                raise TopologyError("no available topology found")
    if not requisite:
        return None  # allowedTopologies with empty terms: as without topology
    requisite = sorted(set(requisite), key=_order)
    if not req.selected_node:
        name_hash, index = name_hash_and_index(req.pvc_name)
        i = ((name_hash + index) & 0xFFFFFFFF) % len(requisite)
        preferred = requisite[i:] + requisite[:i]
    elif req.strict:
        preferred = requisite
    else:
        for i, term in enumerate(requisite):
            if subset(term, selected):
                preferred = requisite[i:] + requisite[:i]
                break
        else:
            shown = _go_list(_go_term(t) for t in requisite)
            raise TopologyError(
                f'topology {_go_term(selected)} from selected node "{req.selected_node}" is not in '
                f"requisite: {shown}"
            )
    return {"requisite": _to_csi(requisite), "preferred": _to_csi(preferred)}


def node_affinity(accessible_topology: Sequence[Mapping[str, str]]) -> dict[str, Any] | None:
    """upstream `GenerateVolumeNodeAffinity`: one term per non-empty segment, each key `In [value]`."""
    terms = [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(seg.items())]}
        for seg in accessible_topology
        if seg
    ]
    if not terms:
        return None
    return {"required": {"nodeSelectorTerms": terms}}


def _requirement_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = str(expr.get("key", "")), expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return not (key in labels and labels[key] in values)
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and len(values) == 1:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def volume_accessible(pv: Mapping[str, Any], node_topology: Mapping[str, str]) -> bool:
    """upstream `VolumeIsAccessible`: the PV's node affinity admits a node labelled `node_topology`
    (NodeGetInfo's segments). No topology, or no required affinity, admits every node."""
    required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
    if not node_topology or required is None:
        return True
    for term in required.get("nodeSelectorTerms") or []:
        expressions = term.get("matchExpressions") or []
        if term.get("matchFields"):
            continue  # the node stand-in has no name, so metadata.name never matches (as upstream)
        if expressions and all(_requirement_matches(e, node_topology) for e in expressions):
            return True
    return False
