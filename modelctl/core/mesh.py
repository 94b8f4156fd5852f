"""How Istio reads the DestinationRules the stack renders: one host's rules merged into one.

A model's routing is a DestinationRule for its host (the traffic policy) and one DestinationRule
per deployed version (that version's subset), so a subset is created and deleted with its own
object and Pulumi can order it against the routes (infra/program.py). istiod merges the
DestinationRules of one host in one namespace that have no workload selector and the same
`exportTo` (istio/istio pilot/pkg/model/destination_rule.go, `mergeDestinationRule`): the
subsets are concatenated, a subset name already defined keeps its first definition, and the
merged rule takes the first top-level `trafficPolicy` it meets (rules are read oldest first).
The local data plane and the policies read the rules through `merged_destination_rules`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]


def merged_destination_rules(rules: Iterable[Obj]) -> dict[tuple[str, str], Obj]:
    """(namespace, spec.host) -> one DestinationRule, merged as istiod merges them.

    Parameters
    ----------
    rules : iterable of dict
        DestinationRule objects, in the order istiod would read them (creation order; render
        order stands in for it). Rules with a `workloadSelector` or `exportTo` are merged too:
        the stack renders neither.

    Returns
    -------
    dict
        The merged rule of each host: the first rule's apiVersion, kind and metadata, `host`,
        the first `trafficPolicy` any of them sets, and every subset name once (its first
        definition).
    """
    merged: dict[tuple[str, str], Obj] = {}
    for rule in rules:
        spec = rule.get("spec") or {}
        key = ((rule.get("metadata") or {}).get("namespace", ""), spec.get("host", ""))
        if key not in merged:
            merged[key] = {**rule, "spec": {**spec, "subsets": list(spec.get("subsets") or [])}}
            continue
        into = merged[key]["spec"]
        known = {subset.get("name") for subset in into["subsets"]}
        into["subsets"] += [s for s in spec.get("subsets") or [] if s.get("name") not in known]
        if "trafficPolicy" not in into and "trafficPolicy" in spec:
            into["trafficPolicy"] = spec["trafficPolicy"]
    return merged
