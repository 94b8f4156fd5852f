"""Run one stage with its numeric kernels pinned: `python -m pipeline <stage> <model>` (dvc.yaml).

OpenBLAS and numpy read their kernel choices from the environment once, when they load, so
this sets them (`modelctl.core.buildenv.pins`) before anything imports numpy, whatever the caller's
environment holds, and then runs `pipeline.<stage>` as `python -m pipeline.<stage>` would.
"""

from __future__ import annotations

import os
import runpy
import sys
from importlib.util import find_spec

from modelctl.core import buildenv


def main(argv: list[str]) -> None:
    if len(argv) != 2 or find_spec(f"pipeline.{argv[0]}") is None:
        raise SystemExit("usage: python -m pipeline <stage> <model>, with a stage named in dvc.yaml")
    # Nothing imported so far loads numpy; were it loaded, the pins below would come too late.
    assert "numpy" not in sys.modules
    settings = buildenv.pins()
    missing = buildenv.missing_cpu_features(settings)
    if missing:
        raise SystemExit(
            f"pipeline: this CPU lacks {', '.join(missing)}, which the pinned kernels "
            f"({', '.join(f'{k}={v}' for k, v in settings.items())}) execute; "
            "run the pipeline on an x86-64-v3 CPU (Intel Haswell or AMD Zen and later)"
        )
    for key in buildenv.CLEARED:
        os.environ.pop(key, None)
    os.environ.update(settings)
    stage, model = argv
    sys.argv = [f"pipeline.{stage}", model]
    runpy.run_module(f"pipeline.{stage}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
