"""What a model server needs to know about the version it serves, as environment variables.

The Pulumi program writes these into each Deployment from the reviewed registry record; the
server reads them back. Nothing about trust comes from the artifact itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from modelctl.core.errors import UserError
from modelctl.core.formats import FORMATS
from modelctl.core.schema import ModelFile, Output, Signature

ENV_PREFIX = "MODELCTL_"
PROFILE_FILE = "profile.npz"


@dataclass(frozen=True)
class ServingSpec:
    model: str
    version: str
    artifact_path: str
    sha256: str
    format: str
    trusted_types: tuple[str, ...]
    signature: Signature
    output: Output
    profile_path: str
    profile_sha256: str

    @classmethod
    def from_record(cls, model: ModelFile, version: str, artifact_dir: str) -> ServingSpec:
        """The spec for `version` of `model`, with files fetched into `artifact_dir`."""
        record = model.versions[version]
        return cls(
            model=model.name,
            version=version,
            artifact_path=f"{artifact_dir}/{FORMATS[record.artifact.format].file_name}",
            sha256=record.artifact.sha256,
            format=record.artifact.format,
            trusted_types=tuple(record.artifact.trusted_types),
            signature=model.signature,
            output=model.output,
            profile_path=f"{artifact_dir}/{PROFILE_FILE}",
            profile_sha256=record.profile.sha256,
        )

    def to_env(self) -> dict[str, str]:
        values = {
            "MODEL": self.model,
            "VERSION": self.version,
            "ARTIFACT": self.artifact_path,
            "SHA256": self.sha256,
            "FORMAT": self.format,
            "TRUSTED_TYPES": json.dumps(list(self.trusted_types)),
            "SIGNATURE": self.signature.model_dump_json(),
            "OUTPUT": self.output.model_dump_json(),
            "PROFILE": self.profile_path,
            "PROFILE_SHA256": self.profile_sha256,
        }
        return {ENV_PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServingSpec:
        def get(key: str) -> str:
            name = ENV_PREFIX + key
            if not env.get(name):
                raise UserError(
                    "environment",
                    f"{name} is not set",
                    "set it (the Pulumi program writes it from the registry record)",
                )
            return env[name]

        try:
            return cls(
                model=get("MODEL"),
                version=get("VERSION"),
                artifact_path=get("ARTIFACT"),
                sha256=get("SHA256"),
                format=get("FORMAT"),
                trusted_types=tuple(json.loads(get("TRUSTED_TYPES"))),
                signature=Signature.model_validate_json(get("SIGNATURE")),
                output=Output.model_validate_json(get("OUTPUT")),
                profile_path=get("PROFILE"),
                profile_sha256=get("PROFILE_SHA256"),
            )
        except (ValueError, ValidationError) as exc:
            problem = str(exc).splitlines()[0]
            raise UserError(
                "environment",
                f"a {ENV_PREFIX}* variable is malformed: {problem}",
                "render it again with modelctl render",
            ) from None
