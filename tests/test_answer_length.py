"""infer.max_new_tokens: 'auto' from the training answers, and a warning with counts when gold answers are longer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from promptintern.answer_length import (
    MARGIN,
    answer_lengths,
    auto_limit,
    long_answers_warning,
    resolve_infer_args,
)
from promptintern.args import InferArgs
from promptintern.cli import main
from promptintern.config import load_config
from promptintern.errors import ConfigError
from promptintern.tasks import get_task

SQL = Path(__file__).resolve().parents[1] / "examples" / "sql" / "task.yaml"


def test_auto_limit_covers_ordinary_answers_but_not_one_outlier():
    assert auto_limit([5, 7, 30]) == 30 + MARGIN  # few answers: the longest
    assert auto_limit([10] * 99 + [400]) == 13 + MARGIN  # 1.25 x p99, the outlier is not waited for
    assert auto_limit([40] * 98 + [44, 46]) == 46 + MARGIN
    with pytest.raises(ConfigError, match="needs training answers"):
        auto_limit([])


def test_lengths_count_the_rendered_answer_and_the_end_of_turn(tiny_model):
    _, tok = tiny_model
    task = get_task(str(SQL))
    answers = [inst.answer for inst in task.load_split("train", None)]
    lengths = answer_lengths(tok, answers, task.format)
    assert lengths == [len(tok(task.format.render_answer(a), add_special_tokens=False)["input_ids"]) + 1
                       for a in answers]
    assert min(lengths) > 5


def test_resolve_auto_and_warn_with_counts(tiny_model, capsys):
    _, tok = tiny_model
    task = get_task(str(SQL))
    train, test = task.load_split("train", None), task.load_split("test", None)
    train_len = answer_lengths(tok, [i.answer for i in train], task.format)
    test_len = answer_lengths(tok, [i.answer for i in test], task.format)

    auto = resolve_infer_args(InferArgs(), "tiny-random", task, train, test)
    assert auto.max_new_tokens == auto_limit(train_len) >= max(train_len)
    err = capsys.readouterr().err
    assert (err == "") == (max(test_len) <= auto.max_new_tokens)
    assert "training" not in err  # auto always fits every training answer

    short = resolve_infer_args(InferArgs(max_new_tokens=12), "tiny-random", task, train, test)
    assert short.max_new_tokens == 12
    n_train, n_test = sum(n > 12 for n in train_len), sum(n > 12 for n in test_len)
    assert n_train and n_test  # the example's SQL answers do not fit in 12 tokens
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("promptintern: warning: infer.max_new_tokens=12 (set in")
    assert f"{n_train} of {len(train)} training and {n_test} of {len(test)} test gold answers" in err
    assert f"raise it to at least {max(train_len + test_len)}" in err
    assert long_answers_warning(1000, {"training": train_len, "test": test_len}, auto=False) is None


@pytest.mark.parametrize("value, error", [("auto", None), (64, None), (0, "must be 'auto' or >= 1"),
                                          ("lots", "must be 'auto' or >= 1"), (True, "does not fit int | str")])
def test_config_accepts_auto_or_a_number(value, error):
    overrides = [f"infer.max_new_tokens={json.dumps(value)}"]
    if error is None:
        assert load_config(None, overrides).infer.max_new_tokens == value
    else:
        with pytest.raises(ConfigError, match=f"--set infer.max_new_tokens=.*: .*max_new_tokens.*{error}"):
            load_config(None, overrides)
    assert InferArgs().max_new_tokens == "auto"


@pytest.mark.parametrize("limit", ["auto", 6])
def test_a_run_uses_the_limit_and_warns_when_answers_are_cut(tmp_path, capsys, limit):
    cfg = {"task": str(SQL), "model": "tiny-random", "method": "base", "baselines": [],
           "output_dir": str(tmp_path / "run"), "schedule": {"stages": 1, "k": 0},
           "infer": {"max_new_tokens": limit, "progress": False}, "eval": {"bootstrap": 0}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--threads", "1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    used = metrics["systems"]["base"]["max_new_tokens"]
    err = capsys.readouterr().err
    if limit == "auto":
        assert isinstance(used, int) and used > 6
        assert "of 20 training" not in err  # auto fits every training answer
    else:
        assert used == 6
        assert "promptintern: warning: infer.max_new_tokens=6 (set in the config or on the command line)" in err
        assert "of 20 training and" in err and "of 5 test gold answers" in err
