"""Atomic writes and the strict JSONL reader."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptintern.errors import DataError
from promptintern.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=6))
def test_jsonl_round_trip(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("rt") / "rows.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("crash mid-write")
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_reader_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"query": "a", "answer": "b"}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: expected a JSON object, got list"):
        read_jsonl(path)
    path.write_text(json.dumps({"query": "a"}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: missing field\(s\) 'answer'"):
        read_jsonl(path, required=("query", "answer"))
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "absent.jsonl")
