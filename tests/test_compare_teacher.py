"""compare's '+teacher' methods: full-prompt FT of each seed answers new queries, the students learn them.

One small comparison on the tiny model (SQL example task) at ``converge``: full-prompt FT, then its
answers to held-out training queries, then promptintern+teacher (stage 0 reused) and
query-only+teacher. A random model never ends an answer by itself, so the one rule of the answer
filter that would reject every answer here (the length cap) is lifted for this fixture only; the
filter itself is tested in test_new_queries.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptintern.cli import main
from promptintern.compare.plan import Plan, load_compare_config
from promptintern.errors import ConfigError
from test_compare import _config

TEACHER = ["compare.methods=[full-prompt,promptintern+teacher,query-only+teacher]", "compare.seeds=1",
           "compare.budget=converge", "compare.max_epochs=1", "compare.patience=1", "compare.eval_steps=2",
           "compare.validation_size=2", "compare.teacher_data.from_train=6", "compare.teacher_data.check=acceptall:ok"]


def _plan(tmp_path: Path, *sets: str) -> Plan:
    run_raw, args = load_compare_config(str(_config(tmp_path)), list(sets))
    return Plan(run_raw, args, tmp_path / "out")


def test_teacher_methods_need_full_prompt_new_queries_and_a_fitting_budget(tmp_path):
    base = [s for s in TEACHER if not s.startswith(("compare.methods", "compare.teacher_data"))]
    cases = {
        "add full-prompt": ["compare.methods=[query-only+teacher]", "compare.teacher_data.from_train=6"],
        "needs new queries": ["compare.methods=[full-prompt,query-only+teacher]"],
        "trains on more rows": ["compare.methods=[full-prompt,query-only+teacher]", "compare.teacher_data.from_train=6",
                                "compare.budget=tokens"],
    }
    for message, sets in cases.items():
        with pytest.raises(ConfigError, match=message):
            _plan(tmp_path, *base, *sets)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    import promptintern.new_queries as nq

    tmp = tmp_path_factory.mktemp("teacher")
    (tmp / "acceptall.py").write_text("def ok(query, answer):\n    return True\n")
    config, out = _config(tmp), tmp / "out"
    sets = [x for s in TEACHER for x in ("--set", s)]
    real = nq.filter_answers
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp))
        mp.setattr(nq, "filter_answers", lambda rows, queries, cap, check: real(rows, queries, 10**9, check))
        assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs", *sets]) == 0
    return config, out, sets


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_full_prompt_ft_labels_the_new_queries_once_per_seed(taught):
    _, out, _ = taught
    queries = _rows(out / "teacher-data" / "queries.jsonl")
    assert len(queries) == 6 and {q["source"] for q in queries} == {"from_train"}
    labelled = {r["id"] for r in _rows(out / "runs" / "full-prompt" / "seed-0" / "stages" / "stage-0.jsonl")}
    assert not {q["id"] for q in queries} & labelled  # beyond the labelled pairs
    answers = _rows(out / "teacher-data" / "seed-0" / "answers.jsonl")
    assert {a["id"] for a in answers} == {q["id"] for q in queries}
    summary = json.loads((out / "teacher-data" / "seed-0" / "answers.json").read_text())
    assert summary["counts"]["answered"] == summary["counts"]["kept"] == 6
    raw = _rows(out / "teacher-data" / "seed-0" / "answers.jsonl.teacher.jsonl")
    assert summary["cost"]["input_tokens"] == sum(r["input_tokens"] for r in raw) > 0
    assert summary["cost"]["output_tokens"] == sum(r["output_tokens"] for r in raw) > 0
    assert summary["cost"]["wall_s"] > 0


def test_the_students_learn_the_teacher_rows_in_their_query_alone_stage(taught):
    _, out, _ = taught
    answers = {a["id"]: a["answer"] for a in _rows(out / "teacher-data" / "seed-0" / "answers.jsonl")}
    for method, n_stages in (("promptintern+teacher", 2), ("query-only+teacher", 1)):
        run = out / "runs" / method / "seed-0"
        last = _rows(run / "stages" / f"stage-{n_stages - 1}.jsonl")
        taught_rows = [r for r in last if r.get("from_teacher")]
        assert {r["id"]: r["answer"] for r in taught_rows} == answers, method
        assert all(r["teacher_messages"] for r in taught_rows), method  # KL to the teacher, its full prompt
        assert all(len(r["messages"]) == len(last[0]["messages"]) for r in taught_rows)
        gold = [r for r in last if not r.get("from_teacher")]
        assert len(gold) == 6 and not any("teacher_messages" in r for r in gold), method  # gold pairs: plain CE
        cfg = json.loads((run / "run.json").read_text())
        assert cfg["inputs"]["teacher_answers"]["sha256"]
        history = json.loads((run / "train" / "history.json").read_text())["stages"]
        assert history[-1]["n_records"] == 6 + len(answers)
        logged = [e for e in history[-1]["log_history"] if "loss" in e]
        assert any("kl" in e for e in logged) and any("ce" in e for e in logged), logged  # CE on gold, KL on taught
    stage0 = json.loads((out / "runs" / "promptintern+teacher" / "seed-0" / "train" / "history.json").read_text())
    assert stage0["stages"][0]["reused_from"] == "runs/full-prompt/seed-0/train/stage-0/final"
    assert not any(r.get("from_teacher") for r in _rows(out / "runs" / "promptintern+teacher" / "seed-0" / "stages"
                                                         / "stage-0.jsonl"))


def test_labelling_is_charged_to_the_teacher_methods_and_reported(taught):
    _, out, _ = taught
    r = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "teacher-data" / "seed-0" / "answers.json").read_text())
    for m in ("promptintern+teacher", "query-only+teacher"):
        assert r["methods"][m]["labelling"]["wall_s"] == pytest.approx(summary["cost"]["wall_s"])
        row = r["cost"]["profiles"]["gpt-4o-mini-ft"]["methods"][m]
        assert row["labelling_hosted"] > 0 and row["labelling_compute"] > 0
        assert row["training_hosted"] > row["labelling_hosted"]
    assert "labelling" not in r["methods"]["full-prompt"]
    assert r["cost"]["profiles"]["gpt-4o-mini-ft"]["methods"]["full-prompt"]["labelling_hosted"] == 0
    assert r["teacher_data"]["n"] == 6 and r["teacher_data"]["seeds"]["0"]["counts"]["kept"] == 6
    report = (out / "report.md").read_text()
    assert "## Teacher data" in report and "| 0 | 6 | 6 | 100.0% |" in report


def test_the_schema_unseen_slice_is_the_one_sql_computes_and_the_caps_count_the_teacher_rows(taught):
    from promptintern.compare.slices import schema_unseen_ids

    config, out, sets = taught
    plan = _plan(out.parent, *[s for s in sets if s != "--set"])
    r = json.loads((out / "results.json").read_text())
    assert plan.planned_steps("query-only+teacher") == [(6 + 6) // 2]  # its cap counts the 6 kept teacher rows
    assert plan.planned_steps("full-prompt") == [6 // 2]
    ids = schema_unseen_ids(plan)
    assert ids is not None
    if ids:
        assert r["slices"]["schema_unseen"]["ids"] == ids
        assert r["slices"]["schema_unseen"]["accuracy"]["n_items"] == len(ids)
    else:
        assert r["slices"] == {}


def test_a_rerun_labels_nothing_again(taught, capsys):
    config, out, sets = taught
    answers = out / "teacher-data" / "seed-0" / "answers.jsonl"
    before = answers.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs", *sets]) == 0
    log = capsys.readouterr().out
    assert "promptintern+teacher seed 0: finished earlier, kept" in log and "answers" not in log
    assert answers.stat().st_mtime_ns == before


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_no_stage_is_trained_twice_promptintern_takes_the_teacher_methods_stage_1(tmp_path):
    """promptintern+teacher's stages before its query-alone one are promptintern's training: a
    promptintern run after it starts at its last stage, and a promptintern that trains every stage
    itself ends stage 1 with the same weights, bit for bit."""
    import torch

    import promptintern.new_queries as nq

    (tmp_path / "acceptall.py").write_text("def ok(query, answer):\n    return True\n")
    config = _config(tmp_path)
    three = [s for s in TEACHER if not s.startswith("compare.methods")] + ["schedule.stages=3"]

    def compare(out: Path, methods: str, *extra: str) -> None:
        sets = [x for s in [*three, f"compare.methods=[{methods}]", *extra] for x in ("--set", s)]
        assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs", *sets]) == 0

    real = nq.filter_answers
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        mp.setattr(nq, "filter_answers", lambda rows, queries, cap, check: real(rows, queries, 10**9, check))
        compare(tmp_path / "out", "full-prompt,promptintern+teacher,promptintern")
    compare(tmp_path / "alone", "full-prompt,promptintern", "compare.reuse_stage0=false")
    runs, alone = tmp_path / "out" / "runs", tmp_path / "alone" / "runs"
    stages = json.loads((runs / "promptintern" / "seed-0" / "train" / "history.json").read_text())["stages"]
    assert [s.get("reused_from") for s in stages] == [
        "runs/full-prompt/seed-0/train/stage-0/final", "runs/promptintern+teacher/seed-0/train/stage-1/final", None]
    assert stages[2]["steps"] >= 1
    for i in (0, 1):
        given = _adapter(runs / "promptintern" / "seed-0" / "train" / f"stage-{i}" / "final")
        assert given.keys() == (trained := _adapter(alone / "promptintern" / "seed-0" / "train" / f"stage-{i}"
                                                    / "final")).keys()
        assert all(torch.equal(given[k], trained[k]) for k in given), f"stage {i}"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "= promptintern+teacher's" in report and "= full-prompt FT's" in report
