"""New, unlabelled queries: each source, de-duplication, the leakage refusal, bad input, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from promptintern.cli import main
from promptintern.errors import ConfigError, DataError
from promptintern.new_queries import (
    NewQuery,
    NewQueryArgs,
    collect,
    held_out_train,
    leaking,
    normalise,
    read_query_log,
    refuse_leakage,
    unique,
)
from promptintern.tasks import get_task
from promptintern.tasks.base import Instance
from promptintern.tasks.geoquery import value_swap

SQL_TASK = str(Path(__file__).resolve().parents[1] / "examples" / "sql" / "task.yaml")


def _inst(i: int, query: str) -> Instance:
    return Instance(id=f"t{i}", query=query, answer="a")


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_normalise_ignores_case_spacing_and_trailing_punctuation():
    assert normalise("  What IS the\tcapital of Texas ? ") == normalise("what is the capital of texas")
    assert normalise("rivers in texas") != normalise("rivers in utah")


def test_query_log_reads_ids_and_refuses_each_malformed_input(tmp_path):
    ok = read_query_log(_write(tmp_path / "ok.jsonl", ['{"query": "a?", "id": "x"}', "", '{"query": "b"}']))
    assert [(q.id, q.query, q.source) for q in ok] == [("x", "a?", "logs"), ("log-2", "b", "logs")]
    bad = {
        "json": ['{"query": "a"', '{"query": "b"}'],
        "empty": ['{"query": "   "}'],
        "type": ['{"query": 3}'],
        "missing": ['{"text": "a"}'],
        "utf8": [b'{"query": "caf\xe9"}'],
        "dup": ['{"query": "a", "id": 1}', '{"query": "b", "id": 1}'],
        "none": [""],
    }
    for name, lines in bad.items():
        with pytest.raises(DataError) as err:
            read_query_log(_write(tmp_path / f"{name}.jsonl", lines))
        assert "\n" not in str(err.value) and f"{name}.jsonl" in str(err.value), name
    with pytest.raises(DataError, match="is a directory"):
        read_query_log(tmp_path)


def test_held_out_train_never_returns_a_labelled_pair_and_is_seeded():
    train = [_inst(i, f"q{i}") for i in range(10)]
    labelled = train[:4]
    got = held_out_train(train, labelled, 5, seed=1)
    assert len(got) == 5 and not {q.id for q in got} & {i.id for i in labelled}
    assert got == held_out_train(train, labelled, 5, seed=1) != held_out_train(train, labelled, 5, seed=2)
    with pytest.raises(ConfigError, match="only 6 training pairs"):
        held_out_train(train, labelled, 7, seed=0)


def test_leakage_is_found_after_normalisation_and_refused_in_one_line():
    held = {"validation": [_inst(1, "Rivers in Utah")], "test": [_inst(2, "what is the capital of texas")]}
    queries = [NewQuery("a", "rivers in utah.", "logs"), NewQuery("b", "WHAT is the capital of Texas?", "logs"),
               NewQuery("c", "a new question", "logs")]
    assert {s: [q.id for q in qs] for s, qs in leaking(queries, held).items()} == {"validation": ["a"], "test": ["b"]}
    with pytest.raises(DataError) as err:
        refuse_leakage(queries, held, "logs.jsonl")
    assert "2 of 3 queries" in str(err.value) and "1 in validation" in str(err.value) and "1 in test" in str(err.value)
    refuse_leakage(queries[2:], held, "logs.jsonl")  # a clean set passes


def test_unique_drops_repeats_and_already_seen_texts():
    seen = {normalise("labelled one")}
    kept, dropped = unique([NewQuery("1", "Labelled one", "x"), NewQuery("2", "new", "x"),
                            NewQuery("3", "NEW ", "x")], seen)
    assert [q.id for q in kept] == ["2"] and dropped == 2


def test_collect_mixes_sources_refuses_user_leakage_and_drops_our_own(tmp_path):
    task = get_task(SQL_TASK)
    train, test = task.load_split("train"), task.load_split("test")
    held = {"test": test}
    labelled = train[:5]
    log = _write(tmp_path / "log.jsonl", [json.dumps({"query": "Which department has the most projects?"}),
                                          json.dumps({"query": labelled[0].query.upper()})])
    found = collect(NewQueryArgs(queries=str(log), from_train=3, seed=0), task, train, labelled, held)
    assert found.counts["logs"] == {"found": 2, "duplicates": 1, "leaking": 0, "kept": 1}
    assert found.counts["from_train"]["kept"] == 3
    assert {q.source for q in found.queries} == {"logs", "from_train"}
    leaky = _write(tmp_path / "leaky.jsonl", [json.dumps({"query": test[0].query})])
    with pytest.raises(DataError, match="1 in test"):
        collect(NewQueryArgs(queries=str(leaky)), task, train, labelled, held)
    # our own source (held-out training pairs) drops a pair equal to a test query and counts it
    clash = [*train, Instance(id="extra", query=test[1].query, answer="x")]
    found = collect(NewQueryArgs(from_train=len(clash) - 5), task, clash, labelled, held)
    assert found.counts["from_train"]["leaking"] == 1 and "extra" not in {q.id for q in found.queries}


def test_a_task_without_a_generator_says_to_use_a_hook():
    with pytest.raises(ConfigError, match="module:function"):
        get_task(SQL_TASK).generate_queries([], 3, 0)


def test_value_swap_fills_each_placeholder_with_values_of_its_type():
    patterns = [("rivers in state_name0", {"state_name0": "state_name"}),
                ("how long is river_name0", {"river_name0": "river_name"})]
    values = {"state_name": ["utah", "ohio", "iowa"], "river_name": ["red", "snake"]}
    got = value_swap(patterns, values, 5, seed=0)
    assert len(got) == len(set(got)) == 5
    for q in got:
        assert q in {f"rivers in {s}" for s in values["state_name"]} | {f"how long is {r}" for r in values["river_name"]}
    assert value_swap(patterns, values, 100, seed=0).__len__() == 5  # only 5 distinct exist
    assert value_swap([], values, 5, seed=0) == []


def test_geoquery_value_swap_uses_database_values_and_only_labelled_wordings(geoquery_data_dir):
    task = get_task("geoquery", split="query")
    train = task.load_split("train", geoquery_data_dir)
    labelled = train[:40]
    got = task.generate_queries(labelled, 200, seed=0, data_dir=geoquery_data_dir)
    assert len(got) == len(set(got)) > 150
    assert not [q for q in got if "_name0" in q or "name1" in q]  # every placeholder filled
    import sqlite3
    con = sqlite3.connect(geoquery_data_dir / "geoquery" / "geography.sqlite")
    states = {r[0] for r in con.execute("SELECT STATE_NAME FROM STATE")}
    labelled_states = {s for s in states for i in labelled if s in i.query}
    assert {s for s in states for q in got if q.endswith(" " + s)} - labelled_states  # new values appear


def test_queries_cli_writes_once_and_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "qgen.py").write_text(
        "def ok(labelled, n, seed):\n    return [f'made up question {i}' for i in range(n)]\n"
        "def boom(labelled, n, seed):\n    raise RuntimeError('generator broke')\n")
    sys.modules.pop("qgen", None)
    out = tmp_path / "new.jsonl"
    base = ["queries", "--set", f"task={SQL_TASK}", "--set", "data.train_size=5", "--out", str(out)]
    assert main([*base, "--from-train", "4", "--generate", "qgen:ok", "--n", "3"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 7 and {r["source"] for r in rows} == {"from_train", "generate"}
    assert main([*base, "--from-train", "4"]) != 0  # never over an existing file
    assert "exists" in capsys.readouterr().err
    cases = {
        "boom": ["--generate", "qgen:boom", "--n", "2"],
        "nohook": ["--generate", "qgen:missing", "--n", "2"],
        "badspec": ["--generate", "not a hook", "--n", "2"],
        "nosource": [],
        "logs": ["--logs", str(_write(tmp_path / "bad.jsonl", [b"\xff\xfe"]))],
    }
    for name, extra in cases.items():
        target = tmp_path / f"{name}.jsonl"
        rc = main([*base[:-1], str(target), *extra])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and err.count("\n") == 0 and err.startswith("promptintern: error:"), (name, err)
        assert not target.exists(), name
