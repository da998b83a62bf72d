"""Scoring: BLEU / exact / structure match, bootstrap intervals, pass@1 through the sandbox."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from promptintern.errors import DataError
from promptintern.evaluate import evaluate_file, format_table, score
from promptintern.evaluate.bootstrap import bootstrap_ci, mean_percent, paired_bootstrap
from promptintern.evaluate.mbpp import check_program, extract_code, pass_at_1
from promptintern.evaluate.nl2bash import (
    bleu,
    bleu_from_stats,
    bleu_stats,
    command_structure,
    exact_match,
    structure_match,
)
from promptintern.evaluate.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    run_python,
    sandbox_capabilities,
)
from promptintern.tasks.base import Instance


@pytest.fixture(scope="module")
def contained():
    """The contained sandbox's capabilities; where it cannot run here (no bubblewrap), its refusal is
    asserted -- one line, exit code 7, what to install -- and the test is skipped with that reason."""
    try:
        return sandbox_capabilities()
    except SandboxUnavailable as exc:
        message = str(exc)
        assert "\n" not in message and exc.exit_code == 7 and "bubblewrap" in message
        pytest.skip(f"no contained sandbox here (refusal asserted): {message[:100]}")


ADD = Instance("add", "Write add.", "def add(a, b):\n    return a + b",
               meta={"test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "test_setup_code": ""})


# --- NL2Bash -------------------------------------------------------------------------------------


def test_bleu_identical_is_100_and_disjoint_is_0():
    cmds = ["find . -name '*.txt' -type f -delete", "ls -l /tmp | grep foo | wc -l"]
    assert bleu(cmds, cmds)["bleu"] == pytest.approx(100.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"])["bleu"] == 0.0


def test_bleu_hand_computed_and_reported_settings():
    # 5 tokens each, last differs: 1..4-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths so BP = 1.
    res = bleu(["sort file one two three"], ["sort file one two four"])
    expected = 100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert res["bleu"] == pytest.approx(expected)
    assert res["per_item"][0] == pytest.approx(expected)
    assert res["bleu_tokenizer"] == "13a"
    assert "tok:13a" in res["bleu_signature"] and "nrefs:1" in res["bleu_signature"]


def test_bleu_from_stats_matches_corpus_bleu_of_any_subset():
    hyps = ["ls -l /tmp", "find . -name foo -print", "grep -r bar src", "du -sh *"]
    refs = ["ls -la /tmp", "find . -name foo", "grep -rn bar .", "du -sh ."]
    stats = bleu_stats(hyps, refs)
    assert stats.shape == (4, 10)
    assert bleu_from_stats(stats) == pytest.approx(bleu(hyps, refs)["bleu"])
    assert bleu_from_stats(stats[[0, 2, 2]]) == pytest.approx(bleu([hyps[0], hyps[2], hyps[2]],
                                                                    [refs[0], refs[2], refs[2]])["bleu"])


def test_exact_match_normalises_whitespace_only():
    assert exact_match("  ls   -l\t/tmp\n", "ls -l /tmp")
    assert not exact_match("ls -la /tmp", "ls -l /tmp")
    assert not exact_match("LS -l /tmp", "ls -l /tmp")


def test_command_structure_by_hand():
    assert command_structure("find . -name '*.py' | xargs -I {} grep -n foo {}") == (
        "find", "-name", "xargs", "-I", "grep", "-n")
    assert command_structure(r"find /x -type f -exec rm -f {} \; -print") == (
        "find", "-type", "-exec", "rm", "-f", "-print")
    assert command_structure("LC_ALL=C sort -k2,2 -t, f 2>/dev/null && echo $(date +%s)") == (
        "sort", "-k", "-t", "echo", "date")
    assert command_structure("tar --exclude=x -czf a.tgz d; sudo -u bob /usr/bin/ls") == (
        "tar", "--exclude", "-czf", "sudo", "-u", "ls")
    assert command_structure("echo 'unbalanced") == ("echo",)  # shlex fails: whitespace fallback
    assert command_structure("") == ()


def test_structure_match_ignores_arguments():
    assert structure_match("find . -name '*.py' | xargs grep -n foo", "find /src -name '*.txt' | xargs grep -n bar")
    assert not structure_match("find . -name x | xargs grep -c foo", "find . -name x | xargs grep -n foo")
    assert not structure_match("ls -l", "ls -l | wc -l")


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    outcomes = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5, dtype=float)
    point = mean_percent(outcomes)
    lo, hi = bootstrap_ci(outcomes, mean_percent, n=500, seed=3)
    assert lo <= point <= hi and lo < hi
    assert bootstrap_ci(outcomes, mean_percent, n=500, seed=3) == (lo, hi)
    assert bootstrap_ci(outcomes, mean_percent, n=500, seed=4) != (lo, hi)


def test_bootstrap_of_corpus_bleu_contains_the_score():
    hyps = ["ls -l /tmp", "find . -name foo -print", "grep -r bar src", "du -sh *", "cat a b c | sort -u"] * 4
    refs = ["ls -la /tmp", "find . -name foo", "grep -rn bar .", "du -sh .", "cat a b | sort -u"] * 4
    stats = bleu_stats(hyps, refs)
    point = bleu_from_stats(stats)
    lo, hi = bootstrap_ci(stats, bleu_from_stats, n=300, seed=0)
    assert lo <= point <= hi


def test_paired_bootstrap():
    a = np.array([1, 0, 1, 1, 0, 1, 1, 0], dtype=float)
    assert paired_bootstrap(a, a.copy(), mean_percent, n=200) == (0.0, 0.0)
    assert paired_bootstrap(np.ones(8), np.zeros(8), mean_percent, n=200) == (100.0, 100.0)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(a, a[:3], mean_percent)


# --- MBPP ----------------------------------------------------------------------------------------


def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nbye") == "def f():\n    return 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```bash\nls\n```\n```python\ny = 2\n```") == "y = 2"
    assert extract_code("```python\ndef f(): pass") == "def f(): pass"  # cut-off generation
    assert extract_code("def g(): return 3\n") == "def g(): return 3"


def test_check_program_and_pass_at_1(contained):
    assert check_program(ADD.answer, "", ADD.meta["test_list"], timeout_s=10)
    assert not check_program("def add(a, b):\n    return a - b", "", ADD.meta["test_list"], timeout_s=10)
    wrong = Instance("w", "q", "", meta=dict(ADD.meta))
    res = pass_at_1({"add": "```python\ndef add(a, b):\n    return 0\n```", "w": "syntax error("},
                    [ADD, wrong], workers=2)
    assert res["pass@1"] == 0.0 and res["passed"] == 0 and res["n"] == 2
    assert res["per_item"]["add"]["status"] == "failed"
    ok = pass_at_1({"add": ADD.answer}, [ADD, wrong], workers=1)
    assert ok["pass@1"] == 50.0 and ok["missing"] == 1 and ok["per_item"]["w"]["status"] == "missing"


def test_tests_that_cannot_be_split_are_counted_failed_and_reported(contained):
    """The oracle's fallback: nothing runs, the item fails, and the report counts it."""
    odd = Instance("odd", "q", "", meta={"test_list": ["assert all(add(i, 0) == i for i in range(3))"],
                                        "test_setup_code": ""})
    res = score("pass@1", {"add": ADD.answer, "odd": ADD.answer}, [ADD, odd], bootstrap=0, workers=1)
    assert res["metrics"]["pass@1"] == 50.0 and res["oracle_fallback"] == 1
    assert res["per_item"]["odd"]["oracle"] == "fallback" and res["per_item"]["add"]["oracle"] == "split"
    assert "1 items with tests that cannot be split" in format_table(res).caption


def test_sandbox_kills_an_infinite_loop_within_its_timeout(contained):
    start = time.monotonic()
    res = run_python("while True:\n    pass\n", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert res.status == "timeout"
    assert res.wall_s < 1.0 + 3.0 and elapsed < 1.0 + 5.0


def test_sandbox_run_python_statuses(contained):
    assert run_python("print('hi')").stdout == "hi\n"
    bad = run_python("raise SystemExit(3)")
    assert bad.status == "failed" and bad.returncode == 3


def test_capabilities_are_reported():
    try:
        caps = sandbox_capabilities()
    except SandboxUnavailable as exc:
        pytest.skip(f"the contained level is not available here: {exc}")
    assert caps.level == "bwrap" and caps.contained
    assert caps.network_isolated and caps.filesystem_isolated and caps.pid_namespace
    opted_in = sandbox_capabilities(level="process")
    assert opted_in.level == "process" and not opted_in.contained and not opted_in.network_isolated


@pytest.mark.parametrize("level", ["bwrap", "process"])
def test_both_levels_give_the_same_verdicts_on_honest_code(level):
    sb = Sandbox(SandboxLimits(timeout_s=10), level=level)
    try:
        sb.capabilities  # noqa: B018
    except SandboxUnavailable as exc:
        pytest.skip(f"level {level} not available here: {exc}")
    checks = "\n".join(ADD.meta["test_list"])
    assert sb.run_checks(ADD.answer, checks).status == "passed"
    assert sb.run_checks("def add(a, b):\n    return 0", checks).status == "failed"
    assert sb.run_checks("import os\nos._exit(0)", checks).status == "failed"


# --- score / evaluate_file -----------------------------------------------------------------------


def _nl2bash_instances():
    pairs = [("list files", "ls -l"), ("find py files", "find . -name '*.py'"),
             ("count lines", "wc -l file.txt"), ("show disk", "df -h")]
    return [Instance(f"nl2bash-{i}", q, a) for i, (q, a) in enumerate(pairs)]


def test_score_bleu_task_with_missing_prediction():
    insts = _nl2bash_instances()
    preds = {"nl2bash-0": "ls -l", "nl2bash-1": "```bash\nfind . -name '*.py'\n```", "nl2bash-2": "wc -c file.txt"}
    res = score("bleu", preds, insts, bootstrap=200)
    assert res["n"] == 4 and res["missing"] == 1 and res["missing_ids"] == ["nl2bash-3"]
    assert res["metrics"]["exact_match"] == 50.0
    assert res["metrics"]["structure_match"] == 50.0
    assert 0 < res["metrics"]["bleu"] < 100
    lo, hi = res["ci95"]["bleu"]
    assert lo <= res["metrics"]["bleu"] <= hi
    assert res["per_item"]["nl2bash-3"] == {"missing": True, "bleu": 0.0, "exact_match": False,
                                            "structure_match": False}
    assert res["bleu_tokenizer"] == "13a"
    assert res["metric"] == "bleu"
    json.dumps(res)  # metrics.json-ready


def test_score_exact_and_pass_at_1_and_table(contained):
    insts = _nl2bash_instances()
    em = score("exact_match", {"nl2bash-0": " ls  -l "}, insts, bootstrap=0)
    assert em["metrics"] == {"exact_match": 25.0} and em["ci95"] == {"exact_match": None}
    pa = score("pass@1", {"add": ADD.answer}, [ADD], bootstrap=50, workers=1)
    assert pa["metrics"]["pass@1"] == 100.0 and pa["ci95"]["pass@1"] == [100.0, 100.0]
    table = format_table(pa)
    assert table.row_count >= 1
    with pytest.raises(ValueError, match="unknown metric"):
        score("rouge", {}, insts)


@pytest.mark.parametrize("metric", ["bleu", "pass@1", "exact_match", "sql_execution"])
def test_every_metric_stores_the_per_item_scores_its_readers_use(metric, tmp_path, request):
    """score() (what metrics.json holds per system) carries, for every test id, the per-item
    field the compare statistics read; for the mean metrics their mean is the headline."""
    import sqlite3

    from promptintern.compare.stats import item_scores

    if metric == "pass@1":
        request.getfixturevalue("contained")
        wrong = Instance("wrong", "Write add.", ADD.answer, meta=dict(ADD.meta))
        insts, preds = [ADD, wrong], {"add": ADD.answer, "wrong": "def add(a, b):\n    return a - b"}
    elif metric == "sql_execution":
        db = tmp_path / "t.sqlite"
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE t (x INT)")
            con.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        golds = ["SELECT x FROM t WHERE x > 1", "SELECT x FROM t"]
        insts = [Instance(f"q{i}", "", g, meta={"database": str(db)}) for i, g in enumerate(golds)]
        preds = {"q0": "SELECT x FROM t WHERE x = 2", "q1": "SELECT x FROM t WHERE x = 1"}
    else:
        insts = _nl2bash_instances()
        preds = {"nl2bash-0": "ls -l", "nl2bash-1": "find . -name '*.txt'", "nl2bash-2": "wc -l file.txt"}
    system = json.loads(json.dumps(score(metric, preds, insts, bootstrap=0, workers=1)))  # as stored
    items = item_scores(system, metric)
    assert sorted(items) == sorted(inst.id for inst in insts)
    assert all(0.0 <= v <= 100.0 + 1e-9 for v in items.values())  # sacrebleu's 100 may be 100.00000000000004
    if metric == "bleu":  # corpus BLEU is not a mean; the per-item score is sentence BLEU
        assert items["nl2bash-0"] == pytest.approx(100.0) and items["nl2bash-3"] == 0.0 and 0 < items["nl2bash-1"] < 100
    else:
        assert np.mean(list(items.values())) == pytest.approx(system["metrics"][metric]) == 50.0


def test_evaluate_file_nl2bash(nl2bash_data_dir, tmp_path):
    from promptintern.tasks import get_task

    test = get_task("nl2bash").load_split("test", nl2bash_data_dir)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i.id, "prediction": i.answer}) + "\n" for i in test[:20]))
    out = tmp_path / "eval"
    metrics = evaluate_file("nl2bash", preds, nl2bash_data_dir, out, bootstrap=100)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == metrics["metrics"]
    assert metrics["missing"] == len(test) - 20
    assert metrics["metrics"]["exact_match"] == pytest.approx(100 * 20 / len(test))
    assert format_table(metrics).row_count >= 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "nl2bash-999999", "prediction": "ls"}) + "\n")
    with pytest.raises(DataError, match="nl2bash-999999"):
        evaluate_file("nl2bash", bad, nl2bash_data_dir, out)
    dup = tmp_path / "dup.jsonl"
    dup.write_text((json.dumps({"id": test[0].id, "prediction": "ls"}) + "\n") * 2)
    with pytest.raises(DataError, match="duplicate"):
        evaluate_file("nl2bash", dup, nl2bash_data_dir, out)


@pytest.mark.slow
def test_mbpp_reference_solutions_pass(mbpp_data_dir, contained):
    """Every MBPP task's own solution, through the full sandbox (about a minute on 2 workers)."""
    from promptintern.tasks import get_task

    task = get_task("mbpp")
    instances = [i for split in ("prompt", "test", "validation", "train") for i in task.load_split(split, mbpp_data_dir)]
    assert len(instances) == 974
    start = time.monotonic()
    res = pass_at_1({i.id: i.answer for i in instances}, instances, workers=2, timeout_s=20)
    elapsed = time.monotonic() - start
    failed = sorted((k for k, v in res["per_item"].items() if not v["passed"]), key=int)
    print(f"MBPP references: {res['passed']}/974 passed in {elapsed:.1f}s; failed: {failed}; "
          f"oracle fallbacks: {res['oracle_fallback']}")
    assert res["passed"] >= 970, failed
    assert res["oracle_fallback"] == 0
    assert math.isclose(res["pass@1"], 100 * res["passed"] / 974)
