"""sql_execution: read-only, time- and size-limited execution; multiset/ordered comparison; SQL exact match."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from promptintern.errors import DataError
from promptintern.evaluate import format_table, score
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
from promptintern.tasks import Instance

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
    from promptintern.tasks import get_task

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
