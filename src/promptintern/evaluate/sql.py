"""Execution accuracy for text-to-SQL, and exact match after SQL normalisation.

A prediction is right when it returns the same rows as the gold query on the task's SQLite file:
as multisets, and in order when the gold query has a top-level ``ORDER BY``. Queries run on a
connection that can only read (:func:`open_readonly`):

- the file is opened with the URI ``mode=ro`` and ``PRAGMA query_only`` is set;
- an authorizer allows only SELECT, column reads, functions and recursive CTEs, so ATTACH,
  writes, DDL, PRAGMA, transactions and ``VACUUM INTO`` are refused when the statement compiles,
  before anything runs;
- a progress handler interrupts a query past its time limit (a recursive CTE that never ends, a
  cross join of every table), at most ``max_rows`` rows are fetched, strings and blobs are capped;
- one statement only, and a query: it must start with SELECT, WITH or VALUES (everything after
  the first complete statement is ignored, for the gold as for the prediction).

Any failure of a prediction fails that item only. A gold query that does not run on the file
(GeoQuery has five) is scored by normalised exact match alone; those items are counted and named.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import DataError
from .bootstrap import bootstrap_ci, mean_percent
from .nl2bash import clean_prediction

ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
DENIED_FUNCTIONS = frozenset({"load_extension"})
QUERY_START = re.compile(r"^\s*\(*\s*(SELECT|WITH|VALUES)\b", re.IGNORECASE)
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|\w+|<=|>=|<>|!=|==|\|\||\S""")


@dataclass(frozen=True)
class SQLLimits:
    """How long and how much one query may run."""

    timeout_s: float = field(default=2.0, metadata={"help": "Wall-clock limit per query, seconds."})
    max_rows: int = field(default=10_000, metadata={"help": "Rows fetched at most; more fails the query."})
    max_length: int = field(default=1_000_000, metadata={"help": "Longest string or blob a query may build."})
    check_every: int = field(default=1_000, metadata={"help": "SQLite VM steps between two time checks."})


class QueryError(Exception):
    """A query that did not run to a result (refused, invalid, too slow or too large)."""


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action not in ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def open_readonly(path: str | Path, limits: SQLLimits = SQLLimits()) -> sqlite3.Connection:
    """A connection to ``path`` that can only read (see the module docstring)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"SQLite database not found: {p}")
    con = sqlite3.connect(f"file:{quote(str(p))}?mode=ro", uri=True, isolation_level=None)
    con.execute("PRAGMA query_only = ON")
    con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_length)
    con.set_authorizer(_authorize)
    return con


def first_statement(sql: str) -> str:
    """``sql`` up to the end of its first complete statement (the first ``;`` outside quotes)."""
    for i, ch in enumerate(sql):
        if ch == ";" and sqlite3.complete_statement(sql[: i + 1]):
            return sql[: i + 1].strip()
    return sql.strip()


def run_query(con: sqlite3.Connection, sql: str, limits: SQLLimits = SQLLimits()) -> list[tuple]:
    """The rows of ``sql`` (its first statement); :class:`QueryError` says why there are none."""
    statement = first_statement(sql)
    if not QUERY_START.match(statement):
        raise QueryError("empty query" if not statement else "not a query (must start with SELECT, WITH or VALUES)")
    deadline = time.monotonic() + limits.timeout_s
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), limits.check_every)
    try:
        cur = con.execute(statement)
        rows = cur.fetchmany(limits.max_rows + 1)
    except sqlite3.OperationalError as exc:
        msg = "time limit exceeded" if "interrupted" in str(exc) else str(exc)
        raise QueryError(msg) from exc
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:  # invalid SQL, NUL bytes, ...
        raise QueryError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        con.set_progress_handler(None, 0)
    if len(rows) > limits.max_rows:
        raise QueryError(f"more than {limits.max_rows} rows")
    return rows


def _cell(value: Any) -> Any:
    """Floats to 9 significant digits, so a sum in another order still compares equal."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.9g}")
    return value


def same_result(pred: list[tuple], gold: list[tuple], ordered: bool) -> bool:
    """Equal as lists when ``ordered``, else as multisets of rows."""
    p = [tuple(_cell(v) for v in row) for row in pred]
    g = [tuple(_cell(v) for v in row) for row in gold]
    return p == g if ordered else Counter(p) == Counter(g)


def sql_tokens(sql: str) -> list[str]:
    """Tokens of a statement: quoted literals and identifiers whole, words, operators, punctuation."""
    return _TOKEN.findall(first_statement(sql).rstrip(";").strip())


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost SELECT sorts its result (an ORDER BY outside every parenthesis)."""
    depth = 0
    tokens = sql_tokens(sql)
    for tok, nxt in zip(tokens, [*tokens[1:], ""], strict=True):
        depth += (tok == "(") - (tok == ")")
        if depth == 0 and tok.upper() == "ORDER" and nxt.upper() == "BY":
            return True
    return False


def normalize_sql(sql: str) -> str:
    """Canonical text for exact match: one space between tokens, keywords and names upper case,
    string literals in single quotes (their text unchanged), no trailing ``;``.

    Names are case-insensitive in SQLite, so upper-casing them is safe; double-quoted tokens are
    read as strings (what SQLite does when no column has that name, and how GeoQuery writes them).
    """
    out = []
    for tok in sql_tokens(sql):
        if tok[0] in "'\"":
            body = tok[1:-1].replace(tok[0] * 2, tok[0])
            out.append("'" + body.replace("'", "''") + "'")
        else:
            out.append(tok.upper())
    return " ".join(out)


def prediction_sql(text: str | None) -> str:
    """The query in a model answer: the first fenced block's body if any, else the text."""
    return "" if text is None else clean_prediction(text)


def score_items(
    predictions: list[str | None], golds: list[str], databases: list[str], limits: SQLLimits = SQLLimits()
) -> list[dict[str, Any]]:
    """One record per item: ``sql_execution`` and ``exact_match`` (bools), ``status``, ``error``.

    ``status`` is ``correct``, ``wrong_result``, ``pred_error`` (the prediction did not run),
    ``missing`` or ``gold_failed`` (the gold did not run: execution is then exact match).
    """
    cons: dict[str, sqlite3.Connection] = {}
    gold_cache: dict[tuple[str, str], list[tuple] | QueryError] = {}
    out = []
    try:
        for pred, gold, db in zip(predictions, golds, databases, strict=True):
            if db not in cons:
                cons[db] = open_readonly(db, limits)
            out.append(_score_one(cons[db], prediction_sql(pred) if pred is not None else None, gold,
                                  gold_cache, db, limits))
    finally:
        for con in cons.values():
            con.close()
    return out


def _score_one(con: sqlite3.Connection, pred: str | None, gold: str, cache: dict, db: str,
               limits: SQLLimits) -> dict[str, Any]:
    exact = pred is not None and normalize_sql(pred) == normalize_sql(gold)
    key = (db, gold)
    if key not in cache:
        try:
            cache[key] = run_query(con, gold, limits)
        except QueryError as exc:
            cache[key] = exc
    gold_rows = cache[key]
    if isinstance(gold_rows, QueryError):
        return {"sql_execution": exact, "exact_match": exact, "status": "gold_failed", "error": str(gold_rows)}
    if pred is None:
        return {"sql_execution": False, "exact_match": False, "status": "missing", "error": None}
    try:
        rows = run_query(con, pred, limits)
    except QueryError as exc:
        return {"sql_execution": False, "exact_match": exact, "status": "pred_error", "error": str(exc)[:200]}
    ok = same_result(rows, gold_rows, has_top_level_order_by(gold))
    return {"sql_execution": ok, "exact_match": exact, "status": "correct" if ok else "wrong_result", "error": None}


def databases_of(instances: Iterable[Any]) -> list[str]:
    """Each instance's ``meta["database"]``; a one-line error names the first without one."""
    out = []
    for inst in instances:
        db = inst.meta.get("database")
        if not db:
            raise DataError(f"sql_execution needs meta['database'] on every instance; {inst.id!r} has none")
        out.append(str(db))
    return out


def execution_accuracy(predictions: list[str | None], instances: list[Any], *, bootstrap: int = 1000, seed: int = 0,
                       limits: SQLLimits = SQLLimits()) -> dict[str, Any]:
    """``sql_execution`` (headline) and ``exact_match`` in percent with bootstrap intervals, per-item
    records, status counts, and the gold queries that failed (scored by exact match; ``gold_failed``)."""
    records = score_items(predictions, [inst.answer for inst in instances], databases_of(instances), limits)
    ex = np.array([r["sql_execution"] for r in records], dtype=float)
    em = np.array([r["exact_match"] for r in records], dtype=float)

    def ci(items: np.ndarray) -> list[float] | None:
        return list(bootstrap_ci(items, mean_percent, n=bootstrap, seed=seed)) if bootstrap > 0 and len(items) else None

    failed = [inst.id for inst, r in zip(instances, records, strict=True) if r["status"] == "gold_failed"]
    return {
        "metrics": {"sql_execution": mean_percent(ex), "exact_match": mean_percent(em)},
        "ci95": {"sql_execution": ci(ex), "exact_match": ci(em)},
        "per_item": records,
        "status_counts": dict(Counter(r["status"] for r in records)),
        "gold_failed": len(failed),
        "gold_failed_ids": failed,
        "sql_limits": asdict(limits),
    }


# ---------------------------------------------------------------- the schema-unseen slice


def schema_names(database: str | Path) -> frozenset[str]:
    """Upper-cased names of the database's tables and columns (what a query can mention).

    Read over a plain read-only connection: only these fixed statements run on it, no model output.
    """
    p = Path(database).resolve()
    if not p.is_file():
        raise DataError(f"SQLite database not found: {p}")
    con = sqlite3.connect(f"file:{quote(str(p))}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = [r[1] for t in tables for r in con.execute(f'PRAGMA table_info("{t}")')]
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{p}: cannot read its schema ({exc})") from exc
    finally:
        con.close()
    return frozenset(n.upper() for n in [*tables, *columns])


def schema_terms(sql: str, names: frozenset[str]) -> frozenset[str]:
    """The tables and columns ``sql`` mentions (tokens equal to a schema name; string literals ignored)."""
    words = {t.strip('"`[]').upper() for t in sql_tokens(sql) if not t.startswith("'")}
    return frozenset(words & names)


def schema_unseen(test_golds: Iterable[str], train_golds: Iterable[str], names: frozenset[str]) -> list[bool]:
    """Per test gold query: whether it mentions a table or column that no training gold query mentions.

    Internalizing a schema should lift exactly these items: a model that learned only the labelled
    pairs has never written those names.
    """
    seen = frozenset().union(*(schema_terms(g, names) for g in train_golds))
    return [bool(schema_terms(g, names) - seen) for g in test_golds]
