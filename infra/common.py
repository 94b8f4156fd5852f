"""Names, labels and the per-model context every builder shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelctl.core.contract import (
    APP_LABEL,
    HTTP_PORT,
    MANAGED_BY,
    MESH_SOURCES,
    SERVICE_PORT,
    STACK_LABEL,
    VERSION_HEADER,
    VERSION_LABEL,
    MeshName,
    MeshSource,
    service_host,
    subset_name,
)
from modelctl.core.errors import UserError
from modelctl.core.releases import stable_version
from modelctl.core.schema import Environment, ModelFile, Release
from modelctl.core.state import CONFIG_NAMESPACE, Stack

Obj = dict[str, Any]
# Re-exported for the builders: the names are the contract's.
__all__ = [
    "HTTP_PORT",
    "MANAGED_BY",
    "SERVICE_PORT",
    "STACK_LABEL",
    "VERSION_HEADER",
    "VERSION_LABEL",
    "subset_name",
]

MODEL_DIR = "/models"
MONITORING_NAMESPACE = "monitoring"


def secret_placeholder(key: str) -> str:
    """What render writes where a secret value goes; the Pulumi program swaps in the secret."""
    return f"<secret:{CONFIG_NAMESPACE}:{key}>"


def container_security() -> Obj:
    """A container that runs as non-root on a read-only root filesystem, with no capabilities."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def metadata(name: str, namespace: str | None, labels: dict[str, str], **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = labels
    meta.update(extra)
    return meta


@dataclass(frozen=True)
class ModelTarget:
    """One model as released on one stack: what every per-model builder needs."""

    stack: Stack
    model: ModelFile
    release: Release
    # The mesh whose request metrics the alerts read; None: the stack's monitoring.mesh.
    mesh_name: MeshName | None = None

    @property
    def env(self) -> Environment:
        return self.stack.config.environment

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def mesh(self) -> MeshSource:
        """What callers got, as this stack's mesh counts it (`contract.MESH_SOURCES`)."""
        return MESH_SOURCES[self.mesh_name or self.env.monitoring.mesh]

    @property
    def namespace(self) -> str:
        return self.env.namespace

    @property
    def host(self) -> str:
        return service_host(self.name, self.namespace)

    @property
    def external_host(self) -> str | None:
        ingress = self.env.ingress
        if not ingress.gateway:
            return None
        if not ingress.domain:
            raise UserError(
                self.stack.file,
                "ingress.gateway is set without ingress.domain",
                "set the domain the gateway serves models under",
                key=f"config.{CONFIG_NAMESPACE}:environment.ingress.domain",
            )
        return f"{self.name}.{ingress.domain}"

    def labels(self, version: str | None = None) -> dict[str, str]:
        labels = {APP_LABEL: self.name, **MANAGED_BY, STACK_LABEL: self.stack.name}
        if version is not None:
            labels[VERSION_LABEL] = version
        return labels

    def selector(self, version: str | None = None) -> dict[str, str]:
        return {APP_LABEL: self.name, **({VERSION_LABEL: version} if version else {})}

    def versioned_name(self, version: str) -> str:
        return f"{self.name}-{subset_name(version)}"

    def subsets(self) -> dict[str, str]:
        """Subset name of every deployed version; two versions mapping to one name are refused."""
        names: dict[str, str] = {}
        for version in self.release.deployed():
            subset = subset_name(version)
            if subset in names:
                raise UserError(
                    self.stack.file,
                    f"versions {names[subset]} and {version} of {self.name} share the name {subset!r}",
                    "deploy only one of them",
                    key=f"config.{CONFIG_NAMESPACE}:releases.{self.name}",
                )
            names[subset] = version
        return names

    def stable(self) -> str:
        """The canary baseline: the version the release started from (`releases.stable_version`)."""
        return stable_version(self.release)

    def canaries(self) -> list[str]:
        stable = self.stable()
        return [v for v in self.release.serving() if v != stable]
