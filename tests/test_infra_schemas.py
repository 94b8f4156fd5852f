"""Every rendered object is valid for the API server as written: core kinds against the official
Kubernetes schemas (1.30-1.34), custom resources against the upstream CRD schemas, each read from
the files `modelctl render` writes. Unknown fields
are errors, because the API server would prune them and the setting would silently vanish."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.istio.networking import v1 as istio
from cloudcoil.models.prometheus_operator import v1 as prometheus
from cloudcoil.models.prometheus_operator import v1alpha1 as prometheus_alpha
from pydantic import BaseModel

from tests.conftest import RenderedStack

KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33", "1.34"]
ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT.parent / "shared" / "schemas"
CUSTOM_MODELS: dict[str, type[BaseModel]] = {
    "VirtualService": istio.VirtualService,
    "DestinationRule": istio.DestinationRule,
    "ServiceMonitor": prometheus.ServiceMonitor,
    "PrometheusRule": prometheus.PrometheusRule,
    "AlertmanagerConfig": prometheus_alpha.AlertmanagerConfig,
}
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(rendered_stacks: list[RenderedStack]) -> list[tuple[str, Obj]]:
    """(stack, object) for every file `modelctl render` wrote, for every stack of the committed
    repository and of the default and full-featured test repositories."""
    objects = [(f"{r.label}/{r.stack}", obj) for r in rendered_stacks for obj in r.objects()]
    assert {stack for stack, _ in objects} >= {"repository/dev", "repository/staging", "repository/prod"}
    return objects


def is_custom(obj: Obj) -> bool:
    return obj["kind"] in CUSTOM_MODELS


def custom_resource_problems(obj: Obj) -> str | None:
    """Validate with the pydantic models generated from the CRDs; they drop unknown fields silently,
    so a dump that differs from the input means a field the API server would prune."""
    model = CUSTOM_MODELS[obj["kind"]].model_validate(obj)
    dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return None if dumped == obj else f"fields lost in validation: {_diff(obj, dumped)}"


def _diff(expected: Any, actual: Any, path: str = "") -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key not in actual:
                return f"{path}.{key}"
            found = _diff(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
    elif isinstance(expected, list) and isinstance(actual, list):
        for index, (left, right) in enumerate(zip(expected, actual, strict=False)):
            found = _diff(left, right, f"{path}[{index}]")
            if found:
                return found
    elif expected != actual:
        return f"{path} ({expected!r} became {actual!r})"
    return ""


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_strictly(rendered: list[tuple[str, Obj]], version: str) -> None:
    core = [(stack, obj) for stack, obj in rendered if not is_custom(obj)]
    assert {obj["kind"] for _, obj in core} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"}
    for stack, obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{stack} {obj['kind']} {obj['metadata']['name']} on {version}: {exc}")


def test_strict_core_validation_refuses_an_unknown_field(rendered: list[tuple[str, Obj]]) -> None:
    deployment = copy.deepcopy(next(obj for _, obj in rendered if obj["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_match_the_crd_models_without_losing_fields(rendered: list[tuple[str, Obj]]) -> None:
    custom = [(stack, obj) for stack, obj in rendered if is_custom(obj)]
    assert {obj["kind"] for _, obj in custom} == set(CUSTOM_MODELS)
    for stack, obj in custom:
        problem = custom_resource_problems(obj)
        assert problem is None, f"{stack} {obj['kind']} {obj['metadata']['name']}: {problem}"


def test_a_misspelt_mirror_percentage_is_caught(rendered: list[tuple[str, Obj]]) -> None:
    vs = _misspelt_virtual_service(rendered)
    assert "mirrorPercentagee" in (custom_resource_problems(vs) or "")


def _misspelt_virtual_service(rendered: list[tuple[str, Obj]]) -> Obj:
    vs = copy.deepcopy(next(obj for _, obj in rendered if obj["kind"] == "VirtualService" and _mirrors(obj)))
    weighted = vs["spec"]["http"][-1]
    weighted["mirrorPercentagee"] = weighted.pop("mirrorPercentage")
    return vs


def _mirrors(vs: Obj) -> bool:
    return any("mirror" in route for route in vs["spec"]["http"])


# ---------------------------------------------------------------- the raw upstream CRDs


class _CrdLoader(yaml.CSafeLoader):
    """The AlertmanagerConfig CRD lists a bare '=' enum item, which YAML 1.1 tags as 'value'."""


def _value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node)


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _value)


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema in which unknown fields are errors, as pruning makes them."""
    if not isinstance(schema, dict):
        return schema
    result = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    for key in ("items", "not"):
        if key in result:
            result[key] = _strict(result[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            result[key] = [_strict(s) for s in result[key]]
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = _strict(result["additionalProperties"])
    if "properties" in result:
        result["properties"] = {k: _strict(v) for k, v in result["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            result.setdefault("additionalProperties", False)
    return result


# The API server checks these itself; CRD schemas leave them out.
_OBJECT_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    if not SCHEMAS.is_dir():
        pytest.skip(f"upstream CRD schemas not found at {SCHEMAS} (they sit beside the repository in CI)")
    validators = {}
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_CrdLoader)
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"] = {**_OBJECT_FIELDS, **schema["properties"]}
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validators[(api_version, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


def _crd_errors(validators: dict[tuple[str, str], jsonschema.Draft7Validator], obj: Obj) -> list[str]:
    validator = validators[(obj["apiVersion"], obj["kind"])]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_custom_resources_validate_against_the_upstream_crds(
    rendered: list[tuple[str, Obj]], crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> None:
    for stack, obj in rendered:
        if is_custom(obj):
            errors = _crd_errors(crd_validators, obj)
            assert not errors, f"{stack} {obj['kind']} {obj['metadata']['name']}: {errors}"


def test_the_upstream_crds_refuse_a_misspelt_field(
    rendered: list[tuple[str, Obj]], crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> None:
    errors = _crd_errors(crd_validators, _misspelt_virtual_service(rendered))
    assert any("mirrorPercentagee" in error for error in errors), errors
