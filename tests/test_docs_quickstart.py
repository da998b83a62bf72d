"""Every command in a shell block of the Quickstart page, run as written, in order.

Weights do not matter here, so each command that loads a model gets the tiny random one (and one
optimizer step per stage) appended as ``--set`` overrides; nothing else about the command changes.
A line that is neither a ``promptintern`` command nor ``make demo`` fails the test, so the page
cannot show a command that no test runs. ``make demo`` is run as the Makefile's own recipe.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from promptintern.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
TINY = ["--set", "model=tiny-random", "--set", "compress.model=tiny-random"]
ONE_STEP = ["--set", "train.max_steps_per_stage=1", "--set", "train.per_device_batch_size=2"]


def quickstart_lines() -> list[str]:
    """The command lines of the page's bash blocks (comments and blank lines dropped)."""
    lines = []
    for block in BLOCK.findall(QUICKSTART.read_text(encoding="utf-8")):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def tiny(argv: list[str]) -> list[str]:
    """``argv`` with the tiny model where the command loads one."""
    command = argv[0]
    if command == "show-prompt":
        return [*argv, "--model", "tiny-random"]
    if command == "show-stages":
        return argv + TINY
    if command in ("run", "train"):
        return argv + TINY + ONE_STEP + ["--set", "data.test_size=4"]
    return argv


def demo_recipe() -> list[str]:
    """The ``promptintern`` arguments of the Makefile's ``demo`` target."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^demo:.*\n\t(.+)$", text, re.M)
    assert recipe, "the Makefile has no demo recipe"
    argv = shlex.split(recipe.group(1))
    assert argv[0].endswith("/promptintern"), argv
    return argv[1:]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A fresh working directory holding the repository's configs/ and examples/."""
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quickstart_shows_only_commands_a_test_runs():
    lines = quickstart_lines()
    assert "make demo" in lines and any(line.startswith("promptintern run ") for line in lines)
    others = [line for line in lines if line != "make demo" and not line.startswith("promptintern ")]
    assert not others, f"the Quickstart shows commands no test runs: {others}"


def test_quickstart_commands_run_in_order(workdir, capsys):
    commands = [line for line in quickstart_lines() if line.startswith("promptintern ")]
    for line in commands:
        argv = tiny(shlex.split(line)[1:])
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, f"{line!r} exited {code}: {out.err[-2000:]}"
        if argv[0] == "run":  # the demo config on the SQL example: no answer is cut off
            assert "warning" not in out.err.lower(), out.err
    assert (workdir / "runs" / "sql" / "metrics.json").is_file()
    assert (workdir / "preds.jsonl").is_file() and (workdir / "preds.metrics.json").is_file()
    assert (workdir / "exported" / "sql" / "config.json").is_file()


def test_quickstart_make_demo_runs(workdir, nl2bash_data_dir, monkeypatch, capsys):
    """``make demo`` is the Makefile's recipe: run it (tiny model, one step) on the shared data."""
    monkeypatch.setenv("PROMPTINTERN_DATA_DIR", str(nl2bash_data_dir))
    argv = demo_recipe()
    assert argv[:2] == ["run", "configs/demo.yaml"], argv
    code = main(argv + TINY + ONE_STEP + ["--set", "data.test_size=4", "--set", "output_dir=runs/demo"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "warning" not in err.lower(), err  # the demo's own config draws no warning
    assert (workdir / "runs" / "demo" / "report.md").is_file()
