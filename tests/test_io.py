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


@pytest.fixture
def umask_022():
    import os

    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def test_published_files_and_dirs_are_readable_as_the_umask_allows(tmp_path, umask_022):
    """mkstemp/mkdtemp make private entries; what is published gets 0644 / 0755 under umask 022."""
    from promptintern.io import atomic_dir, current_umask, write_text

    assert current_umask() == 0o022
    write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "w.bin").write_bytes(b"1")
        (tmp / "sub" / "w.bin").chmod(0o600)  # as a library writing through mkstemp leaves it
        write_json(tmp / "m.json", {})
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in
             [tmp_path / "a.txt", tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert modes == {"a.txt": 0o644, "out": 0o755, "out/sub": 0o755, "out/sub/w.bin": 0o644, "out/m.json": 0o644}


def test_a_stricter_umask_is_respected(tmp_path):
    import os

    from promptintern.io import write_text

    before = os.umask(0o077)
    try:
        write_text(tmp_path / "secret.txt", "x")
    finally:
        os.umask(before)
    assert (tmp_path / "secret.txt").stat().st_mode & 0o777 == 0o600
