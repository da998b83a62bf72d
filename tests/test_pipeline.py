"""End to end with the tiny model: run → metrics/report/plots, infer and eval CLIs, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_fixtures import SQL_TASK, stable, tiny_run_config, write_config
from promptintern.cli import main
from promptintern.io import read_jsonl


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp / "c.yaml", tiny_run_config(tmp / "run"))
    assert main(["run", str(cfg)]) == 0
    return tmp / "run"


def test_run_writes_metrics_report_and_plots(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"promptintern", "base-query"}
    pi = metrics["systems"]["promptintern"]
    assert (pi["tau"], pi["k"], pi["trained"]) == (0.0, 0, True)
    assert "exact_match" in pi["metrics"] and pi["n"] == 5
    assert [(s["tau"], s["k"]) for s in metrics["schedule"]] == [(1.0, 1), (0.0, 0)]
    report = (finished_run / "report.md").read_text()
    assert "| promptintern |" in report and "plots/accuracy_vs_tokens.png" in report
    for name in ("accuracy_vs_tokens", "latency", "train_loss"):
        assert (finished_run / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_jsonl(finished_run / "predictions" / "promptintern.jsonl")
    assert len(rows) == 5 and all(r["input_tokens"] > 0 for r in rows)


def test_query_only_serving_uses_the_query_alone(finished_run):
    stage0 = read_jsonl(finished_run / "stages" / "stage-0.jsonl")
    last = read_jsonl(finished_run / "stages" / "stage-1.jsonl")
    assert last[0]["messages"][-1]["content"].startswith("Question: ")  # the query alone
    assert len(stage0[0]["messages"][-1]["content"]) > 5 * len(last[0]["messages"][-1]["content"])


def test_same_config_gives_byte_identical_predictions(finished_run, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "again"))
    assert main(["run", str(cfg)]) == 0
    for name in ("promptintern", "base-query"):
        a = [stable(r) for r in read_jsonl(finished_run / "predictions" / f"{name}.jsonl")]
        b = [stable(r) for r in read_jsonl(tmp_path / "again" / "predictions" / f"{name}.jsonl")]
        assert a == b
        assert any(r["prediction"] for r in a), "the tiny model should say something"
    ma = json.loads((finished_run / "metrics.json").read_text())
    mb = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert stable(ma["systems"]) == stable(mb["systems"])


def test_infer_and_eval_cli_round_trip(finished_run, tmp_path, capsys):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "sql-test-1", "query": "List the cities of the departments."}\n'
                       '{"id": "sql-test-2", "query": "What is the lowest salary?"}\n')
    out = tmp_path / "preds.jsonl"
    assert main(["infer", "--run", str(finished_run), "--input", str(queries), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["sql-test-1", "sql-test-2"]
    assert all(r["input_tokens"] < 60 for r in rows)  # served with the query alone
    assert main(["eval", "--task", str(SQL_TASK), "--predictions", str(out), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["missing"] == 3
    assert "exact_match" in capsys.readouterr().out


def test_export_of_a_run(finished_run, tmp_path):
    assert main(["export", "--run", str(finished_run), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert (tmp_path / "merged" / "config.json").is_file() and (tmp_path / "merged" / "README.md").is_file()


def test_test_time_retrieval_keeps_a_training_example_that_shares_the_query_id(tmp_path):
    """A test query's id may equal a training instance's id (custom tasks, `infer` numbering
    0, 1, …) without being that instance: its examples must not depend on the id."""
    from promptintern.config import load_config
    from promptintern.pipeline import prepare, serving_messages
    from promptintern.tasks.base import Instance

    cfg = load_config(str(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run"))))
    prep = prepare(cfg)
    target = prep.train[0]
    query = target.query.rstrip(".?") + " please?"  # closest to `target`, not a copy of it
    by_id = {}
    for qid in (target.id, "another-id"):
        (_, messages), = serving_messages(prep, [Instance(id=qid, query=query, answer="")], 1.0, 1)
        by_id[qid] = messages
    assert by_id[target.id] == by_id["another-id"]
    assert target.answer in by_id["another-id"][-1]["content"]


@pytest.mark.parametrize("method, schedule", [
    ("promptintern", {"stages": 1, "k": 1}),
    ("promptintern", {"stages": 2, "k": 1, "shape": "custom", "custom_tau": [1.0, 0.5], "k_shape": "linear"}),
    ("examples-only", {"stages": 2, "k": 2, "k_shape": "custom", "custom_k": [2, 1]}),
])
def test_a_schedule_must_end_at_the_served_prompt(tmp_path, capsys, method, schedule):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", method=method, schedule=schedule))
    assert main(["config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"method {method!r} is served at" in err and "\n" not in err
