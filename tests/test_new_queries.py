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
    assert [(q.id, q.query, q.source) for q in ok] == [("x", "a?", "logs"), ("1", "b", "logs")]
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


def test_filter_drops_runaways_empty_answers_and_failed_checks(tmp_path):
    import sqlite3

    db = tmp_path / "t.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    from promptintern.new_queries import filter_answers, sql_check

    queries = {str(i): f"q{i}" for i in range(5)}
    rows = [{"id": "0", "prediction": "SELECT x FROM t", "output_tokens": 4},
            {"id": "1", "prediction": "SELECT x FROM t WHERE x > 5", "output_tokens": 8},
            {"id": "2", "prediction": "SELECT nope FROM t", "output_tokens": 4},
            {"id": "3", "prediction": "SELECT x FROM t x x x x", "output_tokens": 10},
            {"id": "4", "prediction": "  ", "output_tokens": 0}]
    kept, counts = filter_answers(rows, queries, 10, sql_check(db))
    assert [r["id"] for r in kept] == ["0"] and kept[0] == {"id": "0", "query": "q0", "answer": "SELECT x FROM t"}
    assert counts == {"answered": 5, "empty": 1, "hit_cap": 1, "sql_no_rows": 1, "sql_error": 1, "kept": 1}
    kept, counts = filter_answers(rows, queries, 10, None)
    assert counts["kept"] == 3
    from promptintern.new_queries import hook_check

    (tmp_path / "qcheck3.py").write_text("def boom(q, a):\n    raise ValueError('check broke')\n"
                                         "def short(q, a):\n    return len(a) < 20\n")
    sys.path.insert(0, str(tmp_path))
    try:
        kept, counts = filter_answers(rows, queries, 10, hook_check("qcheck3:short"))
        assert [r["id"] for r in kept] == ["0", "2"] and counts["hook"] == 1
        with pytest.raises(DataError, match="raised ValueError: check broke"):
            filter_answers(rows, queries, 10, hook_check("qcheck3:boom"))
    finally:
        sys.path.remove(str(tmp_path))


@pytest.fixture(scope="module")
def teacher_run(tiny_model, tmp_path_factory):
    """A full-prompt FT run of the tiny model on the SQL example task (3 steps: weights don't matter)."""
    from pipeline_fixtures import tiny_run_config, write_config

    tmp = tmp_path_factory.mktemp("teacher")
    cfg = tiny_run_config(tmp / "run", method="full-prompt", schedule={"stages": 1, "k": 1}, baselines=[],
                          infer={"max_new_tokens": 12, "batch_size": 4, "progress": False})
    cfg["data"] = {"train_size": 8}
    assert main(["train", str(write_config(tmp / "c.yaml", cfg))]) == 0
    return tmp / "run"


def test_label_cli_answers_checks_and_resumes_from_the_teachers_predictions(teacher_run, tmp_path, capsys, monkeypatch):
    queries = _write(tmp_path / "q.jsonl", [json.dumps({"query": f"How many employees work in department {i}?"})
                                           for i in range(5)])
    out = tmp_path / "labelled.jsonl"
    assert main(["label", "--teacher", str(teacher_run), "--queries", str(queries), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    raw = [json.loads(x) for x in (tmp_path / "labelled.jsonl.teacher.jsonl").read_text().splitlines()]
    assert len(raw) == 5 and f"teacher answered 5, kept {len(out.read_text().splitlines())}" in said
    # a random tiny model writes no valid SQL: every answer is rejected, and the reasons are counted
    assert "rejected:" in said
    meta = json.loads((tmp_path / "labelled.jsonl.teacher.json").read_text())
    assert meta["batch_size"] == 4 and meta["prefix_tokens"] > 0  # batches served from the template's cache
    # a rerun with another check answers nothing again: the teacher's cached answers are reused
    (tmp_path / "qcheck.py").write_text("def always(q, a):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("promptintern.pipeline.infer_file", lambda *a, **k: pytest.fail("answered twice"))
    assert main(["label", "--teacher", str(teacher_run), "--queries", str(queries), "--out", str(out),
                 "--force", "--check", "qcheck:always"]) == 0
    ended = [r for r in raw if r["prediction"].strip() and r["output_tokens"] < 12]
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [r["id"] for r in ended]


def test_label_cli_bad_input_is_one_line_and_writes_nothing(teacher_run, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "qcheck2.py").write_text("def ok(q, a):\n    return True\n")
    good = _write(tmp_path / "q.jsonl", [json.dumps({"query": "How many employees are there?"})])
    cases = {
        "malformed": ["--queries", str(_write(tmp_path / "bad.jsonl", ['{"query": ']))],
        "empty": ["--queries", str(_write(tmp_path / "empty.jsonl", ['{"query": ""}']))],
        "utf8": ["--queries", str(_write(tmp_path / "u.jsonl", [b'{"query": "\xff"}']))],
        "nohook": ["--queries", str(good), "--check", "qcheck2:missing"],
        "notrun": ["--queries", str(good), "--teacher", str(tmp_path)],
    }
    for name, extra in cases.items():
        out = tmp_path / f"{name}.out.jsonl"
        argv = ["label", "--teacher", str(teacher_run), "--out", str(out), *extra]
        if "--teacher" in extra:
            argv = ["label", "--out", str(out), *extra]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc != 0 and err.count("\n") == 0 and err.startswith("promptintern: error:"), (name, err)
        assert not out.exists(), name


def test_the_lm_writer_shows_the_template_and_labelled_queries_and_keeps_the_first_line():
    from promptintern.prompt import Template
    from promptintern.query_writer import first_query, writer_messages

    msgs = writer_messages(Template("Answer with SQL.", "TABLE employees(name, salary)"), ["q one", "q two"])
    assert "Answer with SQL." in msgs[0]["content"] and "TABLE employees" in msgs[0]["content"]
    assert "- q one\n- q two" in msgs[1]["content"]
    assert first_query("\n  1. Which employee earns most?\nSELECT ...") == "Which employee earns most?"
    assert first_query('- "How many rivers?"') == "How many rivers?"
    assert first_query("Question 3: what is the capital?") == "what is the capital?"
    assert first_query("  \n \n") == ""


def test_queries_cli_lm_generator_writes_seeded_queries_with_a_local_model(tiny_model, tmp_path):
    """Any local causal LM writes the new queries (the tiny random model's are gibberish, but each is the
    first line of its own answer, seeded, de-duplicated like every source)."""
    base = ["queries", "--set", f"task={SQL_TASK}", "--set", "data.train_size=5", "--generate", "lm",
            "--generate-model", "tiny-random", "--n", "4"]
    assert main([*base, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.jsonl")]) == 0
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert 1 <= len(a) <= 4 and {r["source"] for r in a} == {"generate"}
    assert all(r["query"].strip() and "\n" not in r["query"] for r in a)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()  # the same seed, the same queries


def test_label_samples_several_seeded_answers_per_query(teacher_run, tmp_path, capsys):
    """--samples N --temperature T: every query answered N times (ids <id>~<k>), the same answers on a
    rerun (seeded), other answers than greedy; several samples without a temperature is one line."""
    queries = _write(tmp_path / "q.jsonl", [json.dumps({"id": f"q{i}", "query": f"How many staff in unit {i}?"})
                                           for i in range(3)])

    def raw(name: str, *extra: str) -> list[dict]:
        out = tmp_path / f"{name}.jsonl"
        assert main(["label", "--teacher", str(teacher_run), "--queries", str(queries), "--out", str(out), *extra]) == 0
        return [json.loads(x) for x in (tmp_path / f"{name}.jsonl.teacher.jsonl").read_text().splitlines()]

    sampled = raw("a", "--samples", "3", "--temperature", "1.0")
    assert sorted(r["id"] for r in sampled) == sorted(f"q{i}~{k}" for i in range(3) for k in range(3))
    assert [r["prediction"] for r in raw("b", "--samples", "3", "--temperature", "1.0")] == \
        [r["prediction"] for r in sampled]  # seeded from the batch's ids
    greedy = {r["id"]: r["prediction"] for r in raw("c")}
    assert any(r["prediction"] != greedy[r["id"].split("~")[0]] for r in sampled)  # sampling, not greedy
    capsys.readouterr()
    assert main(["label", "--teacher", str(teacher_run), "--queries", str(queries), "--out",
                 str(tmp_path / "d.jsonl"), "--samples", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temperature > 0" in err[0] and not (tmp_path / "d.jsonl").exists()


def test_distinct_answers_keeps_each_querys_answer_once():
    from promptintern.new_queries import distinct_answers

    rows = [{"id": "a~0", "query": "q", "answer": "x"}, {"id": "a~1", "query": "q", "answer": " x "},
            {"id": "a~2", "query": "q", "answer": "y"}, {"id": "b~0", "query": "r", "answer": "x"}]
    kept, dropped = distinct_answers(rows)
    assert [r["id"] for r in kept] == ["a~0", "a~2", "b~0"] and dropped == 1
