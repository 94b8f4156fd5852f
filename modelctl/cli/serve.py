"""`modelctl serve <model> <version>`: fetch a registered version, verify it, and serve it locally."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from modelctl.cli import MODEL_HELP, VERSION_HELP, Result, add_command, progress, repo_root
from modelctl.core.errors import revoked_version, unknown_version
from modelctl.core.servingspec import ARTIFACT_FILE, PROFILE_FILE, ServingSpec
from modelctl.core.state import load_model, model_file
from modelctl.repo import registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub, "serve", run_serve, "fetch a registered version, verify it and run the model server locally"
    )
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("version", help=VERSION_HELP)
    parser.add_argument("--port", type=int, default=8080, help="port for the API, health and metrics")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--remote", help="a local path or fsspec URL (default: the repository's DVC remote, then cache)"
    )


def run_serve(args: argparse.Namespace) -> Result:
    import serving

    serving.pin_threads()  # before the server's imports bring in scikit-learn
    from serving.app import Settings
    from serving.server import serve

    root = repo_root(args)
    model = load_model(root, args.model)
    record = model.versions.get(args.version)
    if record is None:
        raise unknown_version(model_file(args.model), args.model, args.version, model.ordered_versions())
    if record.status == "revoked":
        raise revoked_version(model_file(args.model), args.model, args.version, "serve another")
    with tempfile.TemporaryDirectory(prefix="modelctl-serve-") as folder:
        registry.fetch_version(
            root,
            args.model,
            args.version,
            out=Path(folder) / ARTIFACT_FILE[record.artifact.format],
            profile_out=Path(folder) / PROFILE_FILE,
            remote=args.remote,
        )
        spec = ServingSpec.from_record(model, args.version, folder)
        progress(
            f"fetched and verified {args.model} {args.version}; serving on http://{args.host}:{args.port}"
        )
        code = serve(spec, Settings(), args.host, args.port)
    data = {"model": args.model, "version": args.version, "exit_code": code}
    return Result(data, f"stopped serving {args.model} {args.version}", exit_code=code)
