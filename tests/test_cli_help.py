"""The ``mara`` help explains itself: each command's ``--help`` is parsed, and every flag that takes a value
must name its type (a metavar from :data:`agents.cli.flags.METAVARS`, or its choices) and its default."""

from __future__ import annotations

import re

import pytest

from agents.cli import SUBCOMMANDS, main
from agents.cli.flags import METAVARS


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, tuple[list[str], str]]:
    """Each option of a help text: its last flag form -> (metavar words, help text), from argparse's layout
    (an option line starts with two spaces and a dash; its help continues on more deeply indented lines)."""
    entries: dict[str, tuple[list[str], str]] = {}
    flag = None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation, _, help_text = line.strip().partition("  ")
            last_form = invocation.split(", ")[-1].split()
            flag = last_form[0]
            entries[flag] = (last_form[1:], help_text.strip())
        elif flag is not None and line.startswith("   ") and line.strip():
            words, help_text = entries[flag]
            entries[flag] = (words, f"{help_text} {line.strip()}".strip())
        else:
            flag = None
    return entries


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_flag_with_a_value_shows_its_type_and_default(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    entries = _entries(_help(capsys, command))
    assert len(entries) >= 5
    valued = 0
    for flag, (words, help_text) in entries.items():
        if not words:  # a switch (--overwrite, --json): present or not
            continue
        valued += 1
        metavar = words[0]
        if metavar.startswith("{"):
            pass  # argparse lists the choices
        else:
            parts = re.split(r"[|=]", metavar)
            assert all(part in METAVARS or part == "NAME" for part in parts), (flag, metavar)
        assert "(default:" in help_text or "(required)" in help_text, (
            f"mara {command} {flag}: no default: {help_text!r}"
        )
    assert valued >= 3


def test_train_help_shows_every_hyperparameter_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    entries = _entries(_help(capsys, "train"))
    assert "default: sac-discrete 0.0003, ppo 0.0003, a2c 0.0007" in entries["--learning-rate"][1]
    assert "env's kl_coef" in entries["--ent-coef"][1]
    assert entries["--top-k"][0] == ["INT"] and "(default: 50)" in entries["--top-k"][1]
    assert entries["--max-prompt-tokens"][0] == ["INT|none"]
    assert "(default: 48)" in entries["--max-new-tokens"][1]  # the default run's, not MARAConfig's 512
    assert "--use-sde" not in entries  # gSDE is for continuous actions: a dead flag on Discrete(2)


def test_top_level_help_and_version(capsys):
    text = _help(capsys)
    assert "MARA-v1" in text and "MARA-v0 (" not in text
    assert main(["--version"]) == 0
    from mara_env import __version__

    assert capsys.readouterr().out.strip().endswith(__version__)


def test_serve_has_no_dead_batch_size_and_evaluate_shows_args_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    serve = _entries(_help(capsys, "serve"))
    assert "--batch-size" not in serve and "--max-batch" in serve  # --max-batch alone sizes the batch
    from agents.evaluation.pipeline import ARGS_DEFAULTS

    evaluate = _entries(_help(capsys, "evaluate"))
    assert f"(default: {ARGS_DEFAULTS['weight']})" in evaluate["--args-weight"][1]
    assert f"(default: {ARGS_DEFAULTS['k']})" in evaluate["--args-k"][1]


def test_default_run_errors_name_the_searched_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "hello"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "runs" / "mara-default") in err and "current directory" in err
    assert main(["evaluate"]) == 2
    assert str(tmp_path / "runs" / "mara-default") in capsys.readouterr().err


def test_top_level_help_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from agents.cli import main; main(['--version']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False"), "mara --version and mara --help stay instant: no torch import"
