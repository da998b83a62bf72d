"""sql_execution: read-only, time- and size-limited execution; multiset/ordered comparison; SQL exact match."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from promptintern.errors import ConfigError, DataError
from promptintern.evaluate import evaluate_file, format_table, score
from promptintern.evaluate.sql import (
    QueryError,
    SQLLimits,
    execution_accuracy,
    has_top_level_order_by,
    normalize_sql,
    open_readonly,
    run_query,
    same_result,
)
from promptintern.tasks import CustomTask, Instance, get_task

FAST = SQLLimits(timeout_s=0.3, max_rows=500)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    """A writable file (so only our guards keep it unchanged): 4 tables of 100 rows, a cross join of 10^8."""
    path = tmp_path / "data" / "geo.sqlite"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE state (state_name TEXT, population INT, area REAL)")
    con.executemany("INSERT INTO state VALUES (?, ?, ?)",
                    [("texas", 300, 2.5), ("ohio", 100, 1.0), ("utah", 200, 3.0), ("iowa", 100, 0.5)])
    for t in ("a", "b", "c", "d"):
        con.execute(f"CREATE TABLE {t} (x INT)")
        con.executemany(f"INSERT INTO {t} VALUES (?)", [(i,) for i in range(100)])
    con.commit()
    con.close()
    return path


def _instances(golds: list[str], db: Path) -> list[Instance]:
    return [Instance(id=f"q{i}", query="", answer=g, meta={"database": str(db)}) for i, g in enumerate(golds)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


HOSTILE = {
    "attach": "ATTACH DATABASE '{dir}/evil.sqlite' AS evil",
    "attach_then_select": "ATTACH '{dir}/evil2.sqlite' AS e2; SELECT state_name FROM state",
    "insert": "INSERT INTO state VALUES ('x', 1, 1.0)",
    "replace": "REPLACE INTO state VALUES ('texas', 0, 0.0)",
    "update": "UPDATE state SET population = 0",
    "delete": "DELETE FROM state",
    "with_delete": "WITH x AS (SELECT 1) DELETE FROM state",
    "with_insert": "WITH x AS (SELECT 1) INSERT INTO state SELECT 'x', 1, 1.0 FROM x",
    "drop": "DROP TABLE state",
    "alter": "ALTER TABLE state ADD COLUMN y INT",
    "create": "CREATE TABLE t (x INT)",
    "create_temp": "CREATE TEMP TABLE t AS SELECT * FROM state",
    "trigger": "CREATE TEMP TRIGGER tr AFTER INSERT ON state BEGIN DELETE FROM state; END",
    "pragma_write": "PRAGMA query_only = OFF",
    "pragma_journal": "PRAGMA journal_mode = WAL",
    "pragma_schema": "PRAGMA writable_schema = ON",
    "vacuum_into": "VACUUM INTO '{dir}/copy.sqlite'",
    "vacuum": "VACUUM",
    "reindex": "REINDEX",
    "explain": "EXPLAIN SELECT * FROM state",
    "analyze": "ANALYZE",
    "begin": "BEGIN EXCLUSIVE",
    "savepoint": "SAVEPOINT s",
    "load_extension": "SELECT load_extension('/tmp/evil.so')",
    "endless_cte": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
    "endless_cte_rows": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
    "cross_join_count": "SELECT COUNT(*) FROM a, b, c, d, state",
    "cross_join_rows": "SELECT * FROM a, b, c, d, state",
    "huge_blob": "SELECT randomblob(2000000000)",
    "invalid": "SELEC state_name FROM state",
    "unknown_table": "SELECT * FROM road",
    "empty": "",
    "nul_byte": "SELECT 'a\x00b'",
}
GOLD = "SELECT state_name FROM state WHERE population = 100"


def test_hostile_predictions_fail_their_item_only_and_leave_the_file_unchanged(db):
    before, files_before = _sha(db), sorted(p.name for p in db.parent.iterdir())
    hostile = [q.format(dir=db.parent) for q in HOSTILE.values()]
    # every hostile prediction is followed by a correct one, which must still score
    preds = [p for q in hostile for p in (q, "select STATE_NAME from STATE where POPULATION = 100;")]
    t0 = time.monotonic()
    res = execution_accuracy(preds, _instances([GOLD] * len(preds), db), bootstrap=0, limits=FAST)
    elapsed = time.monotonic() - t0
    recs = res["per_item"]
    assert [r["sql_execution"] for r in recs[1::2]] == [True] * len(hostile)
    failed = {name: r for name, r in zip(HOSTILE, recs[0::2], strict=True)}
    assert not any(r["sql_execution"] for r in failed.values())
    assert all(r["status"] == "pred_error" for r in failed.values()), failed
    assert "not a query" in failed["drop"]["error"] and "not a query" in failed["attach"]["error"]
    assert "not authorized" in failed["with_delete"]["error"] and "not authorized" in failed["with_insert"]["error"]
    assert "load_extension" in failed["load_extension"]["error"] and "too big" in failed["huge_blob"]["error"]
    assert failed["endless_cte"]["error"] == "time limit exceeded" == failed["cross_join_count"]["error"]
    assert failed["cross_join_rows"]["error"] == "more than 500 rows" == failed["endless_cte_rows"]["error"]
    assert res["metrics"]["sql_execution"] == 50.0 and res["gold_failed"] == 0
    assert elapsed < 10, elapsed  # two time-outs of 0.3 s, the rest refused at compile time
    assert _sha(db) == before and sorted(p.name for p in db.parent.iterdir()) == files_before
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM state").fetchone() == (4,)
    con.close()


def test_each_guard_refuses_writes_on_its_own(db):
    """Below the SELECT-only check: the authorizer; below it, query_only; below that, mode=ro."""
    before = _sha(db)
    con = open_readonly(db, FAST)
    for stmt in ("DELETE FROM state", "DROP TABLE state", f"ATTACH '{db.parent}/x.sqlite' AS x",
                 "PRAGMA query_only = OFF", f"VACUUM INTO '{db.parent}/y.sqlite'", "CREATE TEMP TABLE t (x)"):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized|authorization denied"):
            con.execute(stmt)
    with pytest.raises(QueryError, match="not a query"):
        run_query(con, "DELETE FROM state", FAST)
    assert run_query(con, "SELECT COUNT(*) FROM state", FAST) == [(4,)]  # the connection still works after
    con.set_authorizer(None)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM state")  # query_only
    con.execute("PRAGMA query_only = OFF")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM state")  # mode=ro
    con.close()
    assert _sha(db) == before and sorted(p.name for p in db.parent.iterdir()) == ["geo.sqlite"]
    with pytest.raises(FileNotFoundError):
        open_readonly(db.parent / "nope.sqlite")


def test_multiset_and_ordered_comparison(db):
    golds = [
        "SELECT state_name FROM state WHERE population = 100",  # unordered: any order matches
        "SELECT state_name FROM state ORDER BY population DESC, state_name",  # ordered: order must match
        "SELECT state_name FROM state WHERE state_name IN (SELECT state_name FROM state ORDER BY area LIMIT 2)",
        "SELECT SUM(area) / 4 FROM state",
        "SELECT state_name FROM state WHERE population = 100",  # duplicates count (multiset)
    ]
    preds = [
        "SELECT state_name FROM state WHERE population < 150 ORDER BY state_name DESC",
        "SELECT state_name FROM state ORDER BY state_name",
        "SELECT state_name FROM state WHERE area < 1.5 ORDER BY area DESC",  # inner ORDER BY: unordered
        "SELECT AVG(area) FROM state",
        "SELECT state_name FROM state WHERE population = 100 UNION ALL SELECT 'ohio'",
    ]
    recs = execution_accuracy(preds, _instances(golds, db), bootstrap=0)["per_item"]
    assert [r["sql_execution"] for r in recs] == [True, False, True, True, False]
    assert has_top_level_order_by(golds[1]) and not has_top_level_order_by(golds[2])
    assert not has_top_level_order_by("SELECT 'order by' FROM t")
    assert same_result([(0.1 + 0.2,)], [(0.3,)], ordered=True) and not same_result([(1,)], [(1,), (1,)], False)


def test_normalized_exact_match():
    gold = 'SELECT CITYalias0.CITY_NAME FROM CITY AS CITYalias0 WHERE CITYalias0.STATE_NAME = "texas" ;'
    same = ["select cityalias0.city_name from city as cityalias0 where cityalias0.state_name = 'texas'",
            "SELECT  CITYalias0 . CITY_NAME\nFROM CITY AS CITYalias0 WHERE CITYalias0.STATE_NAME='texas';"]
    assert all(normalize_sql(s) == normalize_sql(gold) for s in same)
    assert normalize_sql(gold.replace("texas", "Texas")) != normalize_sql(gold)  # values keep their case
    assert normalize_sql("SELECT 'it''s'") == normalize_sql('SELECT "it\'s"')
    assert normalize_sql("SELECT a; DROP TABLE t") == "SELECT A"


def test_gold_that_fails_is_scored_by_exact_match_and_counted(db):
    golds = ["SELECT nope FROM state", "SELECT nope FROM state", GOLD]
    preds = ["select NOPE from state ;", "SELECT state_name FROM state", "```sql\n" + GOLD + "\n```"]
    res = execution_accuracy(preds, _instances(golds, db), bootstrap=0)
    assert [r["sql_execution"] for r in res["per_item"]] == [True, False, True]
    assert res["gold_failed"] == 2 and res["gold_failed_ids"] == ["q0", "q1"]
    assert res["status_counts"] == {"gold_failed": 2, "correct": 1}


def test_score_dispatch_per_item_missing_and_table(db):
    insts = _instances([GOLD, GOLD, "SELECT nope"], db)
    out = score("sql_execution", {"q0": "SELECT state_name FROM state WHERE population < 150", "q2": "SELECT nope"},
                insts, bootstrap=200)
    assert out["metric"] == "sql_execution" and out["missing"] == 1
    assert out["per_item"]["q1"] == {"missing": True, "sql_execution": False, "exact_match": False,
                                     "status": "missing", "error": None}
    assert out["metrics"]["sql_execution"] == pytest.approx(200 / 3) and len(out["ci95"]["sql_execution"]) == 2
    assert "1 gold queries do not run" in format_table(out).caption
    with pytest.raises(DataError, match="meta\\['database'\\]"):
        score("sql_execution", {}, [Instance(id="x", query="", answer=GOLD)], bootstrap=0)


def test_geoquery_gold_runs_except_the_known_failures(geoquery_data_dir):
    counts = {}
    for split_by in ("question", "query"):
        task = get_task("geoquery", split=split_by)
        for split in ("train", "validation", "test"):
            insts = task.load_split(split, geoquery_data_dir)
            res = execution_accuracy([i.answer for i in insts], insts, bootstrap=0)
            assert res["metrics"]["sql_execution"] == 100.0
            counts[split_by, split] = res["gold_failed"]
    assert sum(v for (s, _), v in counts.items() if s == "question") == 5
    assert sum(v for (s, _), v in counts.items() if s == "query") == 5


# --- metrics of YAML tasks: sql_execution with a database, and module:function --------------------

EXAMPLE_SQL = Path(__file__).resolve().parents[1] / "examples" / "sql"


def _write_preds(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in rows.items()), encoding="utf-8")
    return path


def test_example_sql_task_scores_by_execution(tmp_path):
    task = get_task(str(EXAMPLE_SQL / "task.yaml"))
    test = task.load_split("test")
    assert task.metric == "sql_execution" and all(i.meta["database"] == str(task.database) for i in test)
    # right answers in another style; one wrong; one hostile
    preds = {i.id: " ".join(i.answer.rstrip(";").split()).replace("SELECT", "select").replace("FROM", "from")
             for i in test}
    preds[test[0].id] = "SELECT city FROM departments"  # duplicates: wrong as a multiset
    preds[test[1].id] = "DROP TABLE employees"
    before = _sha(task.database)
    out = evaluate_file(task, _write_preds(tmp_path / "p.jsonl", preds), None, tmp_path / "eval", bootstrap=100)
    assert out["metrics"]["sql_execution"] == 60.0 and out["gold_failed"] == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_item"][test[2].id]["sql_execution"]
    assert _sha(task.database) == before

    task.to_yaml(tmp_path / "moved" / "task.yaml")
    copy = CustomTask.from_yaml(tmp_path / "moved" / "task.yaml")
    assert copy.database == task.database  # the database path is rebased like the data files


@pytest.mark.parametrize(("text", "message"), [
    ("metric: sql_exec\n", "unknown metric 'sql_exec' (did you mean 'sql_execution'?)"),
    ("metric: sql_execution\n", "sql_execution needs 'database: path/to/file.sqlite'"),
    ("metric: sql_execution\ndatabase: nope.sqlite\n", "database 'nope.sqlite' not found"),
    ("metric: no_such_module_xyz:score\n", "no module 'no_such_module_xyz'"),
    ("metric: usermetric:nope\n", "module 'usermetric' has no attribute 'nope'"),
    ("metric: usermetric:NOT_CALLABLE\n", "'NOT_CALLABLE' is a int, not a function"),
    ("metric: brokenmetric:f\n", "importing"),
    ("metric: 'not a metric!'\n", "choose one of bleu, exact_match, pass@1, sql_execution or 'module:function'"),
])
def test_metric_errors_at_spec_load_are_one_line(tmp_path, text, message):
    (tmp_path / "usermetric.py").write_text("NOT_CALLABLE = 3\n")
    (tmp_path / "brokenmetric.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "train.jsonl").write_text('{"query": "q", "answer": "a"}\n')
    (tmp_path / "task.yaml").write_text(f"name: t\n{text}data: {{train: train.jsonl}}\n")
    with pytest.raises(ConfigError) as exc:
        CustomTask.from_yaml(tmp_path / "task.yaml")
    assert message in str(exc.value) and "\n" not in str(exc.value)


USER_METRIC = '''
def char_f1(predictions, references):
    """Per item: 100 * shared characters / longer length; corpus: the mean."""
    per = [100.0 * len(set(p) & set(r)) / max(len(set(p) | set(r)), 1) for p, r in zip(predictions, references)]
    return per, sum(per) / len(per)


def pooled(predictions, references):
    """A corpus score that is not the item mean: matched characters over all reference characters."""
    hits = [sum(a == b for a, b in zip(p, r)) for p, r in zip(predictions, references)]
    total = sum(len(r) for r in references)
    return {"per_item": [100.0 * h / max(len(r), 1) for h, r in zip(hits, references)],
            "score": 100.0 * sum(hits) / total}


def bad_length(predictions, references):
    return [1.0], 1.0
'''


def _user_task(tmp_path: Path, fn: str) -> CustomTask:
    (tmp_path / "my_metrics.py").write_text(USER_METRIC)
    rows = [{"id": f"t{i}", "query": f"q{i}", "answer": a} for i, a in enumerate(["abcd", "xy", "hello world", "zz"])]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(f"name: mine\nmetric: my_metrics:{fn}\ndata: {{test: test.jsonl}}\n")
    return CustomTask.from_yaml(tmp_path / "task.yaml")


def test_user_metric_flows_into_scores_intervals_and_table(tmp_path):
    task = _user_task(tmp_path, "char_f1")
    preds = _write_preds(tmp_path / "p.jsonl", {"t0": "abcd", "t1": "yx", "t2": "help"})  # t3 missing
    out = evaluate_file(task, preds, None, tmp_path / "eval", bootstrap=300)
    key = "my_metrics:char_f1"
    assert out["metric"] == key and out["missing"] == 1
    expected = [100.0, 100.0, 100.0 * 3 / 9, 0.0]  # {h,e,l} shared of {h,e,l,o,w,r,d,p,' '}; missing scores ""
    assert [out["per_item"][f"t{i}"][key] for i in range(4)] == pytest.approx(expected)
    assert out["metrics"][key] == pytest.approx(sum(expected) / 4)
    lo, hi = out["ci95"][key]
    assert lo < out["metrics"][key] < hi and out["corpus_is_item_mean"]
    assert f"{key} (headline)" in list(format_table(out).columns[0].cells)


def test_user_corpus_metric_is_bootstrapped_by_calling_it_on_resamples(tmp_path):
    task = _user_task(tmp_path, "pooled")
    test = task.load_split("test")
    preds = {"t0": "abcd", "t1": "x", "t2": "hello", "t3": "zz"}
    out = score(task.metric, preds, test, bootstrap=200)
    assert out["metrics"]["my_metrics:pooled"] == pytest.approx(100.0 * (4 + 1 + 5 + 2) / (4 + 2 + 11 + 2))
    assert not out["corpus_is_item_mean"]
    lo, hi = out["ci95"]["my_metrics:pooled"]
    assert lo <= out["metrics"]["my_metrics:pooled"] <= hi and hi - lo > 0


def test_user_metric_with_a_wrong_return_is_one_line(tmp_path):
    task = _user_task(tmp_path, "bad_length")
    with pytest.raises(ConfigError, match="returned 1 per-item scores for 4 predictions"):
        score(task.metric, {}, task.load_split("test"), bootstrap=0)


def test_schema_unseen_slice_names_items_using_a_table_or_column_training_never_used(tmp_path):
    import sqlite3

    from promptintern.evaluate.sql import schema_names, schema_terms, schema_unseen

    db = tmp_path / "s.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE city (name TEXT, pop INT); CREATE TABLE river (rname TEXT, length INT);")
    con.close()
    names = schema_names(db)
    assert names == {"CITY", "NAME", "POP", "RIVER", "RNAME", "LENGTH"}
    assert schema_terms("SELECT name FROM city WHERE name = 'river pop'", names) == {"NAME", "CITY"}
    train = ["SELECT name FROM city", "SELECT COUNT(*) FROM city WHERE pop > 5"]
    test = ["SELECT pop FROM city", "SELECT rname FROM river", "SELECT MAX(length) FROM city"]
    assert schema_unseen(test, train, names) == [False, True, True]


def test_geoquery_query_split_has_a_schema_unseen_slice(geoquery_data_dir):
    from promptintern.evaluate.sql import schema_names, schema_unseen
    from promptintern.tasks import get_task

    task = get_task("geoquery", split="query")
    train, test = task.load_split("train", geoquery_data_dir), task.load_split("test", geoquery_data_dir)
    names = schema_names(test[0].meta["database"])
    unseen = schema_unseen([i.answer for i in test], [i.answer for i in train[:120]], names)
    assert 0 < sum(unseen) < len(test)
    assert not any(schema_unseen([i.answer for i in train[:120]], [i.answer for i in train[:120]], names))
