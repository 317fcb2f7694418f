"""Accessibility requirements: the README's table, aggregation, hash rotation and the per-claim cache."""

from __future__ import annotations

from typing import Any

import pytest

from sidecars.provisioner.topology import (
    NodeView,
    TopologyCache,
    TopologyError,
    TopologyRequest,
    accessibility_requirements,
    flatten,
    fnv1_32,
    name_hash_and_index,
    node_affinity,
)

DRIVER = "hostpath.csi.k8s.io"
ZONE = "topology.example/zone"
RACK = "topology.example/rack"


def csinode(name: str, keys: list[str], driver: str = DRIVER) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"drivers": [{"name": driver, "topologyKeys": keys}]}}


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def cluster() -> NodeView:
    nodes = {
        "n1": node("n1", **{ZONE: "z1", RACK: "r1"}),
        "n2": node("n2", **{ZONE: "z2", RACK: "r1"}),
        "n3": node("n3", **{ZONE: "z2", RACK: "r1"}),  # same segment as n2: de-duplicated
        "other": node("other", unrelated="x"),
    }
    csinodes = {name: csinode(name, [ZONE, RACK]) for name in ("n1", "n2", "n3")}
    return NodeView(csinodes, nodes)


def request(**kw: Any) -> TopologyRequest:
    return TopologyRequest(
        driver=DRIVER, pvc_uid=kw.pop("uid", "uid-1"), pvc_name=kw.pop("name", "data"), **kw
    )


Z1 = {RACK: "r1", ZONE: "z1"}
Z2 = {RACK: "r1", ZONE: "z2"}


def test_fnv1_is_go_fnv_new32_not_fnv1a() -> None:
    assert fnv1_32(b"") == 0x811C9DC5
    assert fnv1_32(b"a") == 0x050C5D7E


@pytest.mark.parametrize(
    ("name", "hashed", "index"),
    [
        ("data", "data", 0),
        ("www-web-3", "web", 3),  # ClaimName-StatefulSetName-Id: only the StatefulSet name
        ("web-12", "web", 12),
        ("my-claim-x", "my-claim-x", 0),  # not an index
        ("a-+1", "a-+1", 0),  # ParseUint refuses signs
        ("a-99999999999", "a-99999999999", 0),  # and values over 32 bits
    ],
)
def test_name_hash_and_index(name: str, hashed: str, index: int) -> None:
    assert name_hash_and_index(name) == (fnv1_32(hashed.encode()), index)


def test_flatten_is_a_cross_product_per_term() -> None:
    allowed = [
        {
            "matchLabelExpressions": [
                {"key": ZONE, "values": ["z1", "z2"]},
                {"key": RACK, "values": ["a", "b"]},
            ]
        },
        {"matchLabelExpressions": [{"key": ZONE, "values": ["z9"]}]},
    ]
    assert flatten(allowed) == [
        ((RACK, "a"), (ZONE, "z1")),
        ((RACK, "a"), (ZONE, "z2")),
        ((RACK, "b"), (ZONE, "z1")),
        ((RACK, "b"), (ZONE, "z2")),
        ((ZONE, "z9"),),
    ]


def test_immediate_binding_aggregates_and_rotates_by_name_hash() -> None:
    got = accessibility_requirements(request(name="data"), cluster(), TopologyCache())
    assert got is not None
    assert got["requisite"] == [Z1, Z2]
    shift = fnv1_32(b"data") % 2
    assert got["preferred"] == [[Z1, Z2], [Z2, Z1]][shift]


def test_statefulset_replicas_spread_over_segments() -> None:
    first = [
        accessibility_requirements(request(name=f"data-web-{i}", uid=f"u{i}"), cluster(), TopologyCache())
        for i in range(4)
    ]
    preferred = [r["preferred"][0] for r in first if r is not None]
    assert preferred[0] != preferred[1] and preferred[0] == preferred[2]


def test_immediate_topology_off_sends_nothing() -> None:
    assert accessibility_requirements(request(immediate=False), cluster(), TopologyCache()) is None


def test_delayed_binding_puts_the_selected_node_first() -> None:
    got = accessibility_requirements(request(selected_node="n2"), cluster(), TopologyCache())
    assert got == {"requisite": [Z1, Z2], "preferred": [Z2, Z1]}


def test_strict_topology_sends_only_the_selected_node() -> None:
    got = accessibility_requirements(request(selected_node="n1", strict=True), cluster(), TopologyCache())
    assert got == {"requisite": [Z1], "preferred": [Z1]}


def test_strict_topology_checks_allowed_topologies() -> None:
    allowed = [{"matchLabelExpressions": [{"key": ZONE, "values": ["z2"]}]}]
    with pytest.raises(TopologyError, match="is not in allowed topologies") as err:
        accessibility_requirements(
            request(selected_node="n1", strict=True, allowed_topologies=allowed), cluster(), TopologyCache()
        )
    assert str(err.value) == (
        "selected node '\"n1\"' topology '[{topology.example/rack r1} {topology.example/zone z1}]' is not in "
        "allowed topologies: [[{topology.example/zone z2}]]"
    )


def test_allowed_topologies_replace_aggregation() -> None:
    allowed = [{"matchLabelExpressions": [{"key": ZONE, "values": ["z2", "z1"]}]}]
    got = accessibility_requirements(
        request(selected_node="n2", allowed_topologies=allowed), cluster(), TopologyCache()
    )
    assert got == {"requisite": [{ZONE: "z1"}, {ZONE: "z2"}], "preferred": [{ZONE: "z2"}, {ZONE: "z1"}]}


def test_missing_csinode_is_not_found_and_other_problems_are_not() -> None:
    with pytest.raises(TopologyError) as err:
        accessibility_requirements(request(selected_node="gone"), cluster(), TopologyCache())
    assert err.value.not_found
    assert str(err.value) == 'failed to get selected CSINode gone: csinode.storage.k8s.io "gone" not found'
    view = cluster()
    view.csinodes["bare"] = csinode("bare", [], driver="other.driver")  # type: ignore[index]
    with pytest.raises(TopologyError, match="no topology key found for node bare") as err:
        accessibility_requirements(request(selected_node="bare"), view, TopologyCache())
    assert not err.value.not_found
    view.csinodes["nolabels"] = csinode("nolabels", [ZONE])  # type: ignore[index]
    with pytest.raises(TopologyError) as err:
        accessibility_requirements(request(selected_node="nolabels"), view, TopologyCache())
    assert str(err.value) == (
        "topology labels from selected node map[] does not match topology keys from CSINode "
        "[topology.example/zone]"
    )


def test_keys_without_any_labelled_node() -> None:
    view = NodeView({"n1": csinode("n1", ["nowhere/key"])}, {"n1": node("n1")})
    with pytest.raises(TopologyError, match=r"topologyKeys \[nowhere/key\] were not found on any nodes"):
        accessibility_requirements(request(), view, TopologyCache())
    with pytest.raises(TopologyError, match="no available topology found"):
        accessibility_requirements(request(), NodeView({}, {}), TopologyCache())


def test_cache_keeps_retries_identical_when_nodes_change() -> None:
    view, cache = cluster(), TopologyCache()
    first = accessibility_requirements(request(selected_node="n1"), view, cache)
    view.nodes.pop("n2")  # type: ignore[attr-defined]
    view.csinodes.pop("n1")  # type: ignore[attr-defined]
    assert accessibility_requirements(request(selected_node="n1"), view, cache) == first
    cache.delete("uid-1")
    with pytest.raises(TopologyError):
        accessibility_requirements(request(selected_node="n1"), view, cache)


def test_node_affinity_one_term_per_segment() -> None:
    assert node_affinity([]) is None
    assert node_affinity([{ZONE: "z1"}, {}, {ZONE: "z2", RACK: "r"}]) == {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["z1"]}]},
                {
                    "matchExpressions": [
                        {"key": RACK, "operator": "In", "values": ["r"]},
                        {"key": ZONE, "operator": "In", "values": ["z2"]},
                    ]
                },
            ]
        }
    }
