"""What every command shares: --json for automation, and no traceback for a user's mistake."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelctl.cli import build_parser, main
from modelctl.core.state import load_state
from tests.conftest import Cli


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [path]
    leaves: list[tuple[str, ...]] = []
    for group in groups:
        for name, child in group.choices.items():
            leaves += leaf_parsers(child, (*path, name))
    return leaves


COMMANDS = leaf_parsers(build_parser())


def test_the_commands_users_expect_exist() -> None:
    names = {" ".join(c) for c in COMMANDS}
    expected = {"check", "register", "fetch", "reproduce", "doctor", "render", "plan", "canary", "promote"}
    expected |= {"ab", "shadow", "bluegreen", "rollback", "status", "history", "drift", "serve"}
    expected |= {"models list", "models show", "models history", "deprecate", "revoke"}
    assert expected <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_prints_json_on_request(command: tuple[str, ...]) -> None:
    parser = build_parser()
    for name in command:
        group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = group.choices[name]
    assert "--json" in parser.format_help()


@pytest.mark.parametrize("spelling", [["judge"], ["canary", "judge"]], ids=" ".join)
def test_the_judge_is_reachable_under_both_spellings(spelling: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelctl", *spelling, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "--snapshot" in proc.stdout


def test_a_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelctl", "-C", str(tmp_path), "check"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0
    assert (
        "not inside a modelctl repository (no Pulumi.yaml found); run it from the repository" in proc.stderr
    )


def parser_for(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in command:
        group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = group.choices[name]
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_and_argument_has_help(command: tuple[str, ...]) -> None:
    parser = parser_for(command)
    if hasattr(parser, "release"):  # `canary`, `ab`, `shadow`: the release parser behind their subcommands
        parser = parser.release
    missing = [a.dest for a in parser._actions if not a.help or not a.help.strip()]
    assert missing == []


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "modelctl")
def test_help_shows_percent_signs_once(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert "%%" not in capsys.readouterr().out


def test_top_level_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes (every command):\n  0  done" in out
    assert "1  error" in out
    assert "2  a finding" in out
    assert "the canary takes 100% of traffic" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"modelctl \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
    assert main(["--version", "--json"]) == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", json.loads(capsys.readouterr().out)["version"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "-C", "{root}", "status"],
        ["status", "--json", "-C", "{root}"],
        ["-C", "{root}", "status", "--json"],
        ["--json", "status", "-C", "{root}"],
    ],
    ids=["before", "after", "split", "swapped"],
)
def test_json_and_repo_go_before_or_after_the_command(
    argv: list[str], repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(root=repo) for a in argv]) == 0
    assert "staging" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["canery"], "invalid choice: 'canary'"),
        (["canary", "m", "v1.0.0", "--stack", "s", "--weigth", "3"], "did you mean --weight?"),
        (["rollback", "m", "--stack", "s", "--too", "v1.0.0"], "did you mean --to?"),
        (["models", "lsit"], "did you mean 'list'?"),
        (["plan", "--bsae", "HEAD"], "did you mean --base?"),
        (["staus"], "did you mean 'status'?"),
        # A mistyped required flag: argparse would report the flag missing, not the typo.
        (
            ["canary", "m", "v1.0.0", "--stak", "s"],
            "modelctl canary: unrecognized arguments: --stak; did you mean --stack?",
        ),
        (["promote", "m", "--stak", "s"], "did you mean --stack?"),
        (
            ["canary", "analyze", "--stak", "s"],
            "did you mean --stack?",
        ),
    ],
)
def test_a_mistyped_command_or_flag_suggests_the_right_one(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: modelctl")
    assert expected.replace("'canary'", "'canery'") in err or expected in err
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"errors": [err.removeprefix("error: ").strip()]}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["history", "no-such-model", "--stack", "staging"], "no model named 'no-such-model'"),
        (["history", "fraud-detection", "--stack", "qa"], "no stack named 'qa'"),
        (["status", "--stack", "qa"], "no stack named 'qa'"),
        (["models", "show", "no-such-model"], "no model named 'no-such-model'"),
        (["models", "history", "no-such-model"], "no-such-model"),
        (["rollback", "no-such-model", "--stack", "staging"], "no model named 'no-such-model'"),
        (
            ["release-hold", "clear", "fraud-detection", "v1.1.0", "--stack", "qa", "--reason", "x"],
            "no stack named 'qa'",
        ),
        (["plan", "--stack", "qa"], "no stack named 'qa'"),
        (["render", "--stack", "qa"], "no stack named 'qa'"),
        (["check", "--stack", "qa"], "no stack named 'qa'"),
        (["deprecate", "no-such-model", "v1.0.0"], "no-such-model"),
        (["status", "--stack", "stagin"], "no stack named 'stagin'; did you mean 'staging'? (known: dev,"),
        (
            ["models", "show", "fraud-detecton"],
            "did you mean 'fraud-detection'? (known: ",
        ),
    ],
)
def test_unknown_model_and_stack_names_are_refused_everywhere(
    argv: list[str], expected: str, repo: Path, cli: Cli
) -> None:
    code, out, err = cli(repo, *argv)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert expected in err


def test_the_readme_walks_the_canary_steps_staging_has() -> None:
    root = Path(__file__).resolve().parents[1]
    steps = load_state(root).stack("staging").config.releases["fraud-detection"].analysis.steps
    readme = (root / "README.md").read_text()
    assert "staging " + " → ".join(f"{s}%" for s in steps) in readme


def test_the_dvc_config_names_the_extra_the_readme_installs() -> None:
    root = Path(__file__).resolve().parents[1]
    extra = re.search(r"needs modelctl\[([\w-]+)\]", (root / ".dvc" / "config").read_text())
    assert extra
    assert f"pip install -c constraints.txt -e '.[{extra[1]}]'" in (root / "README.md").read_text()
