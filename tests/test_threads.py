"""Thread count and OpenMP wait policy: where each setting comes from and which one wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from promptintern.cli import build_parser, main
from promptintern.errors import ConfigError
from promptintern.threads import THREADS_ENV, available_cores, env_threads, prepare_openmp, resolve_threads


@pytest.mark.parametrize("argv, expected", [
    (["--threads", "3", "config"], 3),
    (["config", "--threads", "2"], 2),
    (["show-stages", "--threads", "1", "cfg.yaml"], 1),
    (["--threads", "3", "infer", "--run", "r", "--input", "i", "--output", "o"], 3),
    (["eval", "--task", "t", "--predictions", "p", "--threads", "4"], 4),
    (["config"], None),
])
def test_threads_accepted_before_or_after_the_command(argv, expected):
    assert build_parser().parse_args(argv).threads == expected


def test_cli_threads_hold_while_the_command_runs_and_are_restored(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    seen = []
    monkeypatch.setattr("promptintern.cli.dispatch", lambda args: seen.append(
        (os.environ[THREADS_ENV], resolve_threads(configured=2))) or 0)
    assert main(["config", "--threads", "1"]) == 0
    assert seen == [("1", 1)]  # the command line outranks the environment and a config's num_threads
    assert os.environ[THREADS_ENV] == "3"  # an in-process caller keeps its environment
    monkeypatch.delenv(THREADS_ENV)
    assert main(["config", "--threads", "2"]) == 0
    assert seen[-1] == ("2", 2) and THREADS_ENV not in os.environ


def test_bad_thread_counts_are_one_line_errors(monkeypatch, capsys):
    assert main(["config", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "promptintern: error: --threads: threads must be >= 1, got 0"
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ConfigError, match=r"\$PROMPTINTERN_THREADS: expected a whole number"):
        env_threads()


def test_precedence_environment_then_config_then_cores():
    assert resolve_threads(None, {}) == available_cores() >= 1
    assert resolve_threads(3, {}) == 3
    assert resolve_threads(3, {THREADS_ENV: "1"}) == 1
    assert resolve_threads(None, {THREADS_ENV: " "}) == available_cores()
    with pytest.raises(ConfigError, match="num_threads: threads must be >= 1"):
        resolve_threads(0, {})


def test_wait_policy_defaults_to_passive_but_the_user_wins():
    env: dict[str, str] = {}
    prepare_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    prepare_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_wait_policy_is_in_place_before_torch_loads_openmp():
    """``import promptintern`` first, then torch: libgomp reads the policy when torch loads it."""
    code = ("import os, promptintern, torch; "
            "print(os.environ['OMP_WAIT_POLICY'], 'OpenMP' in torch.__config__.parallel_info())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "True"]
