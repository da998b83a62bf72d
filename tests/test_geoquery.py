"""GeoQuery: both splits, filled-in variables, the schema template, and the task's data errors."""

from __future__ import annotations

import json
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from promptintern.errors import ConfigError, DataError
from promptintern.tasks import get_task
from promptintern.tasks.geoquery import DB_FILE, TABLES, build_instances, fill_variables, render_documentation


def _sizes(task, root) -> dict[str, int]:
    return {s: len(task.load_split(s, root)) for s in ("train", "validation", "test")}


def test_both_splits_have_the_standard_sizes(geoquery_data_dir):
    assert _sizes(get_task("geoquery"), geoquery_data_dir) == {"train": 549, "validation": 49, "test": 279}
    query = get_task("geoquery", split="query")
    assert _sizes(query, geoquery_data_dir) == {"train": 536, "validation": 159, "test": 182}
    train_sql = {i.answer for i in query.load_split("train", geoquery_data_dir)}
    entries = json.loads((geoquery_data_dir / "geoquery" / "geography.json").read_text())
    test_entries = {i.id.split("-")[1] for i in query.load_split("test", geoquery_data_dir)}
    train_entries = {i.id.split("-")[1] for i in query.load_split("train", geoquery_data_dir)}
    assert not test_entries & train_entries  # query split: no test SQL in training
    assert all(entries[int(e)]["query-split"] == "test" for e in test_entries)
    assert len(train_sql) > 100


def test_variables_filled_in_query_and_answer(geoquery_data_dir):
    test = get_task("geoquery").load_split("test", geoquery_data_dir)
    by_id = {i.id: i for i in test}
    first = by_id["geoquery-0-3"]  # "what is the biggest city in state_name0", state_name0 = kansas
    assert first.query == "what is the biggest city in kansas"
    assert first.answer.count('"kansas"') == 2 and "state_name0" not in first.answer
    assert first.answer.startswith("SELECT CITYalias0.CITY_NAME FROM CITY AS CITYalias0") and first.answer.endswith(" ;")
    assert first.meta["database"].endswith("geography.sqlite")
    assert not any("_name0" in i.query or "_name0" in i.answer for i in test)


def test_fill_variables_whole_words_longest_first():
    values = {"state_name0": "ohio", "state_name1": "utah", "state_name10": "iowa"}
    assert fill_variables('x = "state_name10" , "state_name1" STATE_NAME state_name0s', values) == \
        'x = "iowa" , "utah" STATE_NAME state_name0s'


def test_build_instances_uses_entry_defaults_and_rejects_bad_split(tmp_path):
    entry = {"query-split": "dev", "sql": ['SELECT 1 WHERE "a" = "city_name0" ;'],
             "variables": [{"name": "city_name0", "example": "austin"}],
             "sentences": [{"text": "is city_name0 big", "variables": {}, "question-split": "train"}]}
    q = build_instances([entry], "query", tmp_path / "db.sqlite")
    assert [i.query for i in q["validation"]] == ["is austin big"] and not q["train"]
    assert build_instances([entry], "question", tmp_path)["train"][0].answer == 'SELECT 1 WHERE "a" = "austin" ;'
    entry["sentences"][0]["question-split"] = "holdout"
    with pytest.raises(DataError, match="question-split"):
        build_instances([entry], "question", tmp_path)


def test_split_option_and_missing_data_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="question, query"):
        get_task("geoquery", split="random")
    with pytest.raises(DataError, match="geoquery/geography.json"):
        get_task("geoquery").load_split("test", tmp_path)
    (tmp_path / "geoquery").mkdir()
    (tmp_path / "geoquery" / "geography.json").write_text("{}")
    (tmp_path / "geoquery" / "geography.sqlite").write_bytes(b"")
    with pytest.raises(DataError, match="list of entries"):
        get_task("geoquery").load_split("test", tmp_path)


def test_committed_documentation_is_the_generated_one(geoquery_data_dir):
    committed = resources.files("promptintern.tasks").joinpath("templates/geoquery_documentation.md")
    assert committed.read_text(encoding="utf-8") == render_documentation(geoquery_data_dir), (
        "regenerate: python -m promptintern.tasks.geoquery DATA_DIR > src/promptintern/tasks/templates/"
        "geoquery_documentation.md")


def test_template_documents_every_table_and_column(geoquery_data_dir):
    task = get_task("geoquery")
    doc, text = task.template.documentation, task.template.instruction + "\n" + task.template.documentation
    con = sqlite3.connect(f"file:{geoquery_data_dir / DB_FILE}?mode=ro", uri=True)
    for table in TABLES:
        assert f"\n{table}: " in doc
        for col in con.execute(f"PRAGMA table_info({table})"):
            assert f"- {col[1].upper()} " in doc, (table, col[1])
    con.close()
    assert "ROAD" not in doc  # in the schema file, not in the database
    assert all(k in text for k in task.force_keep)
    for convention in ("STATEalias0", "DERIVED_TABLEalias0", "DISTINCT", " ;", "BORDER_INFOalias0.BORDER", "MAX("):
        assert convention in task.template.instruction


def test_template_token_count(tiny_model):
    tokenizer, task = tiny_model[1], get_task("geoquery")  # the tiny model carries the SmolLM2 tokenizer
    n = sum(len(tokenizer(getattr(task.template, p), add_special_tokens=False)["input_ids"])
            for p in ("instruction", "documentation"))
    assert 1500 <= n <= 2500, n  # docs/own-task.md states the exact figure


@pytest.mark.parametrize(("config", "split"), [("geoquery.yaml", "question"), ("geoquery-query.yaml", "query")])
def test_configs_fit_the_gold_sql_and_the_full_prompt(tiny_model, geoquery_data_dir, config, split):
    from promptintern.config import load_config

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / config))
    task = get_task(cfg.task, **cfg.task_options)
    assert task.split == split
    tokenizer = tiny_model[1]

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    longest = max(n(i.answer) for s in ("train", "validation", "test") for i in task.load_split(s, geoquery_data_dir))
    assert cfg.infer.max_new_tokens >= longest
    template = n(task.template.instruction) + n(task.template.documentation)
    # the template, k examples and the answer, each as long as the longest, plus 200 for queries and chat markup
    assert cfg.train.max_length >= template + (cfg.schedule.k + 1) * longest + 200


def test_eval_cli_scores_the_query_split_with_a_task_option(geoquery_data_dir, tmp_path, monkeypatch):
    from promptintern.cli import main

    monkeypatch.setenv("PROMPTINTERN_DATA_DIR", str(geoquery_data_dir))
    test = get_task("geoquery", split="query").load_split("test", geoquery_data_dir)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i.id, "prediction": i.answer}) + "\n" for i in test))
    out = tmp_path / "m.json"
    assert main(["eval", "--task", "geoquery", "--task-option", "split=query", "--predictions", str(preds),
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 182 and metrics["metrics"]["sql_execution"] == 100.0 and metrics["gold_failed"] == 0
    assert main(["eval", "--task", "geoquery", "--predictions", str(preds), "--out", str(tmp_path / "q.json")]) != 0  # question split: other ids


def test_template_examples_are_training_sql_of_the_query_split(geoquery_data_dir):
    """The instruction's two full queries must not hand the query split's test SQL to the model."""
    import re

    from promptintern.evaluate.sql import normalize_sql

    def shape(sql: str) -> str:
        return re.sub(r"'[^']*'", "'V'", normalize_sql(sql))

    task = get_task("geoquery", split="query")
    full = [s for s in re.findall(r"`([^`]*)`", task.template.instruction) if s.startswith("SELECT ") and s.endswith(" ;")]
    assert len(full) == 2
    by_split = {s: {shape(i.answer) for i in task.load_split(s, geoquery_data_dir)} for s in ("train", "test")}
    for sql in full:
        assert shape(sql) in by_split["train"] and shape(sql) not in by_split["test"]
