"""The local stack's two hooks into the analyses: its Prometheus, and its model servers' logs.

A stack running on this machine (`modelctl up`) needs no URL or log file from the user. The
`onebox` shell is imported when a hook runs, so nothing else in the API loads it.
"""

from __future__ import annotations

from pathlib import Path

from modelctl.core.errors import UserError


def local_prometheus(root: Path, stack: str) -> str | None:
    """The URL of the Prometheus of `stack` running on this machine, None when it is not up."""
    from onebox.stack import status

    try:
        return str(status(root, stack)["prometheus"])
    except UserError:
        return None


def local_server_logs(root: Path, stack: str, model: str) -> list[Path]:
    """The log files of `model`'s servers on `stack` running on this machine, sorted; none when it
    is not up."""
    from onebox.stack import RunState, run_dir

    state = RunState.load(run_dir(root, stack), stack)
    return sorted(
        {Path(p.log) for p in state.procs.values() if p.kind == "server" and p.extra.get("model") == model}
    )
