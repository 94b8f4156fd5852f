"""Objects as YAML files, one per object, with stable names: what a reviewer reads and diffs."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import yaml

from infra import alertmanager
from infra.build import build_stack
from infra.common import Obj, subset_name
from modelctl.core.state import State

NATIVE_ALERTMANAGER = "alertmanager/alertmanager.yml"
# Plain Prometheus rule files (what `promtool check rules` and a Prometheus without the operator read).
NATIVE_RULES = "prometheus/{model}.rules.yml"
HEADER = "# Rendered by 'modelctl render' from the desired state; do not edit.\n"


class _Dumper(yaml.CSafeDumper):
    """Multi-line strings (PromQL, dashboards) as literal blocks, so diffs stay line by line; no
    anchors or aliases for values the builders share, so each file reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: _Dumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def file_name(obj: Obj) -> str:
    """`<model>/<kind>[-<version>].yaml` for a model's objects, `<kind>.yaml` for the stack's,
    `<component>/<kind>.yaml` for a stack component's."""
    labels = obj["metadata"].get("labels", {})
    kind = obj["kind"].lower()
    if "app" not in labels:
        # A stack-level component (the canary analysis job) has a folder of its own.
        component = labels.get("app.kubernetes.io/name")
        return f"{component}/{kind}.yaml" if component else f"{kind}.yaml"
    version = labels.get("version")
    suffix = f"-{subset_name(version)}" if version else ""
    return f"{labels['app']}/{kind}{suffix}.yaml"


def is_object_file(name: str) -> bool:
    """Whether a rendered file holds a Kubernetes object (the native configurations are `.yml`)."""
    return name.endswith(".yaml")


def rule_groups(rule: Obj) -> Obj:
    """A PrometheusRule's groups as a Prometheus rule file (`{"groups": [...]}`), the form the
    Prometheus Operator hands to Prometheus."""
    return {"groups": rule["spec"]["groups"]}


def render_files(state: State, stack_name: str, models: Collection[str] | None = None) -> dict[str, str]:
    """Relative file name -> YAML text for every object of the stack, each PrometheusRule again as
    a native rule file, and the native Alertmanager configuration when the stack has receivers.

    With `models`, only those models' objects and the stack's own (the files of the others are
    left out, not changed)."""
    files: dict[str, str] = {}
    for obj in build_stack(state, stack_name, models=models):
        app = obj["metadata"].get("labels", {}).get("app")
        if models is not None and app is not None and app not in models:
            continue
        name = file_name(obj)
        if name in files:
            raise RuntimeError(f"two rendered objects map to {name}")  # a naming bug, not a user error
        files[name] = HEADER + to_yaml(obj)
        if obj["kind"] == "PrometheusRule":
            files[NATIVE_RULES.format(model=obj["metadata"]["labels"]["app"])] = HEADER + to_yaml(
                rule_groups(obj)
            )
    stack = state.stack(stack_name)
    if stack.config.environment.receivers:
        files[NATIVE_ALERTMANAGER] = HEADER + to_yaml(alertmanager.native_config(stack))
    return dict(sorted(files.items()))
