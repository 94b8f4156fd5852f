"""`modelctl serve <model> <version>`: fetch a registered version, verify it, and serve it locally."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from modelctl.cli import MODEL_HELP, VERSION_HELP, Result, add_command, progress, repo_root
from modelctl.core.errors import revoked_version, unknown_version
from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import PROFILE_FILE, ServingSpec
from modelctl.core.state import load_model, model_file
from modelctl.repo import registry
from serving.options import add_server_options, settings_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub, "serve", run_serve, "fetch a registered version, verify it and run the model server locally"
    )
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("version", help=VERSION_HELP)
    add_server_options(parser, host="127.0.0.1")
    parser.add_argument(
        "--remote", help="a local path or fsspec URL (default: the repository's DVC remote, then cache)"
    )


def run_serve(args: argparse.Namespace) -> Result:
    import serving

    serving.pin_threads()  # before the server's imports bring in scikit-learn
    from serving.server import bind, serve

    root = repo_root(args)
    model = load_model(root, args.model)
    record = model.versions.get(args.version)
    if record is None:
        raise unknown_version(model_file(args.model), args.model, args.version, model.ordered_versions())
    if record.status == "revoked":
        raise revoked_version(model_file(args.model), args.model, args.version, "serve another")
    listening = bind(args.host, args.port)  # a taken port is one error line, before anything else
    port = listening.getsockname()[1]  # the one bound, for --port 0
    with listening, tempfile.TemporaryDirectory(prefix="modelctl-serve-") as folder:
        registry.fetch_version(
            root,
            args.model,
            args.version,
            out=Path(folder) / FORMATS[record.artifact.format].file_name,
            profile_out=Path(folder) / PROFILE_FILE,
            remote=args.remote,
        )
        spec = ServingSpec.from_record(model, args.version, folder)
        progress(f"fetched and verified {args.model} {args.version}; serving on http://{args.host}:{port}")
        code = serve(
            spec,
            settings_from(args),
            args.host,
            port,
            args.grace_s,
            listening=listening,
            access_log=args.access_log,
        )
    data = {"model": args.model, "version": args.version, "exit_code": code}
    return Result(data, f"stopped serving {args.model} {args.version}", exit_code=code)
