"""GeoQuery (Zelle & Mooney, 1996) as text-to-SQL: English question -> one SQLite query.

The data is the SQL version of Finegan-Dollak et al. (ACL 2018, ``text2sql-data``): 246 SQL
queries over one fixed 7-table US-geography database, each with the questions it answers (877
in all); ``geography.sqlite`` holds the database. Questions and SQL carry placeholders
(``state_name0``) with per-question values; the answer is the canonical (first) SQL of the entry
with the values filled in, and the question gets the same values.

Two standard splits, chosen by the ``split`` option:

- ``question``: each question's own ``question-split`` (549 train / 49 dev / 279 test); test SQL
  is mostly a training SQL with new values.
- ``query``: each entry's ``query-split`` (536 / 159 / 182 questions); no test SQL appears in
  training, so the schema and conventions must carry the answer.

``dev`` is our ``validation``. Ids are ``geoquery-<entry>-<question>`` (0-based positions in
``geography.json``) in both splits. Every instance's ``meta["database"]`` is the SQLite file,
which the ``sql_execution`` metric runs queries against.

The template's documentation (``templates/geoquery_documentation.md``) was produced by
:func:`render_documentation` from ``geography-schema.csv`` (types, keys), the SQLite data (row
counts, example values, ranges) and :data:`TABLE_NOTES`/:data:`COLUMN_NOTES` (meaning and units,
checked against known figures: Alabama 51,700 square miles and 3,894,000 people, the
Mississippi 3,778 km, Mount McKinley 6,194 m); ``tests/test_geoquery.py`` checks the committed
file still equals it. The schema file's ROAD table is left out: it is not in the SQLite file and
no query uses it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, DataError
from ..prompt import PromptFormat, Template
from .base import Instance, Task, builtin_template, check_split, resolve_data_dir

JSON_FILE = "geoquery/geography.json"
DB_FILE = "geoquery/geography.sqlite"
SCHEMA_FILE = "geoquery/geography-schema.csv"
SPLIT_CHOICES = ("question", "query")
SPLIT_NAMES = {"train": "train", "dev": "validation", "test": "test"}
TABLES = ("STATE", "BORDER_INFO", "CITY", "HIGHLOW", "RIVER", "MOUNTAIN", "LAKE")
EXAMPLES_PER_COLUMN = 3

TABLE_NOTES = {
    "STATE": 'one row per state (the 50 states and "district of columbia")',
    "BORDER_INFO": "one row per pair of neighbouring states, stored in both directions",
    "CITY": "one row per city; a city name can recur in several states",
    "HIGHLOW": "one row per state: its highest and lowest point",
    "RIVER": "one row per (river, state it flows through): a river recurs once per state",
    "MOUNTAIN": "one row per mountain",
    "LAKE": "one row per (lake, state it touches): a lake recurs once per state",
}
COLUMN_NOTES = {
    ("STATE", "STATE_NAME"): "the state",
    ("STATE", "CAPITAL"): "its capital city (not every capital is in CITY)",
    ("STATE", "POPULATION"): "inhabitants (about 1980)",
    ("STATE", "AREA"): "area in square miles",
    ("STATE", "COUNTRY_NAME"): 'always "usa"',
    ("STATE", "DENSITY"): "POPULATION / AREA, people per square mile",
    ("BORDER_INFO", "STATE_NAME"): "a state",
    ("BORDER_INFO", "BORDER"): "a state that borders STATE_NAME",
    ("CITY", "CITY_NAME"): "the city",
    ("CITY", "STATE_NAME"): "the state it lies in",
    ("CITY", "POPULATION"): "inhabitants (1980 census)",
    ("CITY", "COUNTRY_NAME"): 'always "usa"',
    ("HIGHLOW", "STATE_NAME"): "the state",
    ("HIGHLOW", "HIGHEST_POINT"): "name of its highest point",
    ("HIGHLOW", "HIGHEST_ELEVATION"): "its elevation in meters",
    ("HIGHLOW", "LOWEST_POINT"): "name of its lowest point",
    ("HIGHLOW", "LOWEST_ELEVATION"): "its elevation in meters (0 = sea level)",
    ("RIVER", "RIVER_NAME"): "the river",
    ("RIVER", "LENGTH"): "total length of the river in km",
    ("RIVER", "TRAVERSE"): "a state the river flows through",
    ("RIVER", "COUNTRY_NAME"): 'always "usa"',
    ("MOUNTAIN", "MOUNTAIN_NAME"): "the mountain",
    ("MOUNTAIN", "MOUNTAIN_ALTITUDE"): "altitude in meters",
    ("MOUNTAIN", "STATE_NAME"): "the state it stands in",
    ("MOUNTAIN", "COUNTRY_NAME"): 'always "usa"',
    ("LAKE", "LAKE_NAME"): "the lake",
    ("LAKE", "AREA"): "total area of the lake in square km",
    ("LAKE", "STATE_NAME"): "a state the lake touches",
    ("LAKE", "COUNTRY_NAME"): 'always "usa"',
}
# Where each typed placeholder's values live in the database (the value-swap generator draws from here).
VALUE_COLUMNS = {
    "state_name": ("STATE", "STATE_NAME"), "capital": ("STATE", "CAPITAL"), "city_name": ("CITY", "CITY_NAME"),
    "river_name": ("RIVER", "RIVER_NAME"), "mountain_name": ("MOUNTAIN", "MOUNTAIN_NAME"),
    "highest_point": ("HIGHLOW", "HIGHEST_POINT"), "lowest_point": ("HIGHLOW", "LOWEST_POINT"),
    "country_name": ("STATE", "COUNTRY_NAME"),
}
FOREIGN_KEYS = {("STATE", "CAPITAL"): "CITY.CITY_NAME"}  # every other foreign key is STATE.STATE_NAME
_PLACEHOLDER_CHARS = "A-Za-z0-9_"


def fill_variables(text: str, values: dict[str, str]) -> str:
    """``text`` with each whole-word placeholder (``state_name0``) replaced by its value."""
    if not values:
        return text
    names = sorted(values, key=len, reverse=True)
    pattern = re.compile(
        rf"(?<![{_PLACEHOLDER_CHARS}])(" + "|".join(map(re.escape, names)) + rf")(?![{_PLACEHOLDER_CHARS}])"
    )
    return pattern.sub(lambda m: values[m.group(1)], text)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of ``geography.json``, checked for the fields the task reads."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of entries, got {type(entries).__name__}")
    for n, e in enumerate(entries):
        if not (isinstance(e, dict) and e.get("sql") and isinstance(e.get("sentences"), list)
                and e.get("query-split") in SPLIT_NAMES):
            raise DataError(f"{path}: entry {n} lacks 'sql', 'sentences' or a valid 'query-split'")
    return entries


def build_instances(entries: list[dict[str, Any]], split_by: str, database: Path) -> dict[str, list[Instance]]:
    """Instances per split (train / validation / test) under the ``question`` or ``query`` split."""
    out: dict[str, list[Instance]] = {s: [] for s in SPLIT_NAMES.values()}
    for i, entry in enumerate(entries):
        defaults = {v["name"]: v["example"] for v in entry.get("variables", [])}
        for j, sent in enumerate(entry["sentences"]):
            raw = entry["query-split"] if split_by == "query" else sent.get("question-split")
            if raw not in SPLIT_NAMES:
                raise DataError(f"{JSON_FILE}: entry {i} sentence {j} has no valid question-split")
            values = {**defaults, **sent.get("variables", {})}
            out[SPLIT_NAMES[raw]].append(Instance(
                id=f"geoquery-{i}-{j}",
                query=fill_variables(sent["text"], values).strip(),
                answer=fill_variables(entry["sql"][0], values).strip(),
                meta={"database": str(database)},
            ))
    return out


@dataclass
class GeoQueryTask(Task):
    """GeoQuery text-to-SQL on its question or query split, scored by execution accuracy."""

    split: str = field(
        default="question",
        metadata={"help": "question (549/49/279, test SQL seen with other values) | query (536/159/182, unseen SQL)."},
    )

    name: ClassVar[str] = "geoquery"
    metric: ClassVar[str] = "sql_execution"
    format: ClassVar[PromptFormat] = PromptFormat(
        system="You are a helpful assistant who writes SQL queries.",
        examples_header="Examples:",
        example_format="Question: {query}\nSQL: {answer}",
        query_format="Question: {query}",
        answer_format="{answer}",
    )
    force_keep: ClassVar[tuple[str, ...]] = (*TABLES, "alias0", "DERIVED_TABLEalias0", "DISTINCT", " ;")

    def __post_init__(self) -> None:
        if self.split not in SPLIT_CHOICES:
            raise ConfigError(f"geoquery option split must be one of {', '.join(SPLIT_CHOICES)}, got {self.split!r}")
        self.template: Template = builtin_template(self.name)
        self._splits: dict[Path, dict[str, list[Instance]]] = {}

    def load_split(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[Instance]:
        check_split(split)
        root = resolve_data_dir(data_dir, [JSON_FILE, DB_FILE])
        key = root.resolve()
        if key not in self._splits:
            self._splits[key] = build_instances(read_entries(root / JSON_FILE), self.split, key / DB_FILE)
        return list(self._splits[key][split])


    def generate_queries(
        self, labelled: list[Instance], n: int, seed: int, data_dir: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """Value swap: the labelled questions' wordings with their typed values replaced by others.

        A question such as "what cities are in state_name0" is refilled with other states of the
        database, so the new queries keep the task's wordings but ask about things no labelled pair
        asks about. Only labelled questions are used as patterns; held-out ones are never read.
        """
        root = resolve_data_dir(data_dir, [JSON_FILE, DB_FILE])
        patterns = question_patterns(read_entries(root / JSON_FILE), [i.id for i in labelled])
        return value_swap(patterns, column_values(root / DB_FILE), n, seed)


# ---------------------------------------------------------------- value-swap generator


def question_patterns(entries: list[dict[str, Any]], ids: list[str]) -> list[tuple[str, dict[str, str]]]:
    """For each ``geoquery-<entry>-<question>`` id, its wording and placeholder types (placeholders only)."""
    out = []
    for qid in ids:
        m = re.fullmatch(r"geoquery-(\d+)-(\d+)", qid)
        if m is None:
            continue
        entry = entries[int(m.group(1))]
        text = entry["sentences"][int(m.group(2))]["text"]
        types = {v["name"]: v["type"] for v in entry.get("variables", []) if v.get("type") in VALUE_COLUMNS}
        used = {name: kind for name, kind in types.items() if re.search(rf"(?<![{_PLACEHOLDER_CHARS}]){name}(?![{_PLACEHOLDER_CHARS}])", text)}
        if used:
            out.append((text, used))
    return out


def column_values(database: Path) -> dict[str, list[str]]:
    """Every distinct value of each placeholder type, read from the database (read-only)."""
    con = sqlite3.connect(f"file:{database.resolve()}?mode=ro", uri=True)
    try:
        return {
            kind: [r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY 1")]
            for kind, (table, col) in VALUE_COLUMNS.items()
        }
    finally:
        con.close()


def value_swap(patterns: list[tuple[str, dict[str, str]]], values: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """Up to ``n`` distinct questions: a seeded pattern, each placeholder a seeded value of its type."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    for _ in range(50 * n if patterns else 0):
        if len(out) >= n:
            break
        text, types = rng.choice(patterns)
        filled = fill_variables(text, {name: rng.choice(values[kind]) for name, kind in types.items()})
        out.setdefault(" ".join(filled.split()), None)
    return list(out)


# ---------------------------------------------------------------- documentation generator


def _schema_rows(path: Path) -> dict[str, list[dict[str, str]]]:
    """Table -> its columns (name, type, primary/foreign key flags) from ``geography-schema.csv``."""
    tables: dict[str, list[dict[str, str]]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            table = row["Table Name"].strip()
            if table != "-":
                tables.setdefault(table, []).append({k.strip(): v.strip() for k, v in row.items()})
    return tables


def _column_line(con: sqlite3.Connection, table: str, col: dict[str, str]) -> str:
    name, kind = col["Field Name"], col["Type"]
    keys = ["primary key"] if col["Is Primary Key"] == "y" else []
    if col["Is Foreign Key"] == "y":
        keys.append(f"foreign key -> {FOREIGN_KEYS.get((table, name), 'STATE.STATE_NAME')}")
    declared = {r[1].upper(): r[2].lower() for r in con.execute(f"PRAGMA table_info({table})")}
    stored = f", stored as {declared[name]}" if kind.startswith("int") and declared.get(name) == "text" else ""
    head = f"- {name} {kind}" + (f" ({', '.join(keys)}{stored})" if keys else (f" ({stored[2:]})" if stored else ""))
    note = COLUMN_NOTES[(table, name)]
    if kind.startswith("varchar"):
        values = [r[0] for r in con.execute(f"SELECT DISTINCT {name} FROM {table} LIMIT {EXAMPLES_PER_COLUMN}")]
        shown = "" if note.startswith("always") else "; e.g. " + ", ".join(f'"{v}"' for v in values)
    else:
        lo, hi = con.execute(f"SELECT MIN(CAST({name} AS REAL)), MAX(CAST({name} AS REAL)) FROM {table}").fetchone()
        shown = f"; {_num(lo)} to {_num(hi)}"
    return f"{head}: {note}{shown}"


def _num(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


def render_documentation(data_dir: str | os.PathLike[str]) -> str:
    """The database documentation of the template, from the schema file and the data."""
    root = Path(data_dir)
    schema = _schema_rows(root / SCHEMA_FILE)
    con = sqlite3.connect(f"file:{(root / DB_FILE).resolve()}?mode=ro", uri=True)
    try:
        lines = ["Database (SQLite): US geography, 7 tables. Every name is stored in lower case "
                 '("new york", "mississippi"); quoted values below are examples.']
        for table in TABLES:
            (rows,) = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            lines += ["", f"{table}: {TABLE_NOTES[table]}; {rows} rows"]
            lines += [_column_line(con, table, col) for col in schema[table]]
    finally:
        con.close()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m promptintern.tasks.geoquery DATA_DIR > templates/geoquery_documentation.md
    import sys

    sys.stdout.write(render_documentation(sys.argv[1]))
