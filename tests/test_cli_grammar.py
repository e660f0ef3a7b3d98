"""The ``recsys-emb`` command's grammar: a version, and help text for every subcommand and option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from recsys_emb import __version__
from recsys_emb.cli import TECHNIQUE_COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Every subcommand without a help line and option without help text below ``parser``."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    out.append(f"{path} {name}: no help line")
                out += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
            out.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help text")
    return out


def test_every_command_and_option_has_help() -> None:
    missing = _undocumented(build_parser([]), "recsys-emb")
    for name in TECHNIQUE_COMMANDS:  # their options are added only when the command is chosen
        missing += _undocumented(build_parser([name]), "recsys-emb")
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"recsys-emb {__version__}"
    setup = (REPO / "setup.py").read_text()
    assert "version=VERSION" in setup and "__version__" in setup  # one source of the version


def test_license_is_apache_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license="Apache-2.0"' in (REPO / "setup.py").read_text()


def test_help_imports_no_torch() -> None:
    """``recsys-emb --help`` (and the parser of every built-in command) stays fast: no torch import."""
    import subprocess
    import sys

    code = ("import sys; from recsys_emb.cli import build_parser; build_parser([]); "
            "print(sorted(m for m in ('torch', 'torchrec', 'fbgemm_gpu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
