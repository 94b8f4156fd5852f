"""The Python API under the CLI: one function per release, registry and analysis operation.

Each function takes typed arguments, runs the transaction of `modelctl.repo.transaction`
(validate → edit → policies → one commit, or nothing changes) and returns what it did as data;
the CLI (`modelctl.cli`) only parses arguments and prints these results. Errors are
`modelctl.core.errors.UserError` / `UserErrors`, one line per problem.

Why here, beside the CLI and not in `modelctl/repo/`: the default policy check renders the
stack's objects (`infra`) and runs the policy rules (`policies`), and an analysis reads
Prometheus and the local stack (`onebox`). `repo/` may not import those shells, so the
transaction takes the check as a parameter; this package, an outer layer like the CLI, supplies
the real one (imported lazily, so `modelctl fetch` in the serving image starts without them).
Pass `policies=` to use another check.

The package, by concern (the public names below are its face; each loads its module on first
use, so a release command loads no analysis code):

- `releases`: the release operations (canary, promote, ab, shadow, bluegreen, rollback,
  clear_hold) and the default policy check
- `registry`: register, deprecate, revoke, and the dvc.lock check
- `analysis`: what every analysis shares: the releases it looks at on a stack with the state,
  Prometheus and history read once, the window counts, the snapshot committed
- `analysis_canary`: `canary_analyze` and `replay`; `analysis_experiment`: `ab_analyze` and
  `ab_traffic`; `analysis_shadow`: `shadow_report` and the report a canary cites as evidence
- `local`: the local stack's two hooks (its Prometheus, its servers' logs)

Example::

    from pathlib import Path
    from modelctl import api

    change = api.canary(Path("."), "fraud-detection", "v1.1.0", stack="staging")
    print(change.commit, change.release.traffic)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelctl.api.analysis_canary import Analysis, Replay, canary_analyze, replay
    from modelctl.api.analysis_experiment import Experiment, ab_analyze, ab_traffic
    from modelctl.api.analysis_shadow import ShadowResult, shadow_report
    from modelctl.api.registry import StatusChange, check_lock, deprecate, register, revoke
    from modelctl.api.releases import (
        TransactionOptions,
        ab,
        bluegreen,
        bluegreen_switch,
        canary,
        check_policies,
        clear_hold,
        promote,
        rollback,
        shadow,
        shadow_off,
    )
    from modelctl.repo.transaction import ReleaseChange

_HOME = {
    "ReleaseChange": "releases",
    "TransactionOptions": "releases",
    "ab": "releases",
    "bluegreen": "releases",
    "bluegreen_switch": "releases",
    "canary": "releases",
    "check_policies": "releases",
    "clear_hold": "releases",
    "promote": "releases",
    "rollback": "releases",
    "shadow": "releases",
    "shadow_off": "releases",
    "StatusChange": "registry",
    "check_lock": "registry",
    "deprecate": "registry",
    "register": "registry",
    "revoke": "registry",
    "Analysis": "analysis_canary",
    "Replay": "analysis_canary",
    "canary_analyze": "analysis_canary",
    "replay": "analysis_canary",
    "Experiment": "analysis_experiment",
    "ab_analyze": "analysis_experiment",
    "ab_traffic": "analysis_experiment",
    "ShadowResult": "analysis_shadow",
    "shadow_report": "analysis_shadow",
}
__all__ = [
    "Analysis",
    "Experiment",
    "ReleaseChange",
    "Replay",
    "ShadowResult",
    "StatusChange",
    "TransactionOptions",
    "ab",
    "ab_analyze",
    "ab_traffic",
    "bluegreen",
    "bluegreen_switch",
    "canary",
    "canary_analyze",
    "check_lock",
    "check_policies",
    "clear_hold",
    "deprecate",
    "promote",
    "register",
    "replay",
    "revoke",
    "rollback",
    "shadow",
    "shadow_off",
    "shadow_report",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
