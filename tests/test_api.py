"""The Python API mirrors the CLI and survives the import of every submodule."""

from __future__ import annotations

import json

import promptintern
import promptintern.exporter
import promptintern.inference
import promptintern.training.loop  # noqa: F401  (the API names must not be shadowed by submodules)
from pipeline_fixtures import tiny_run_config


def test_api_names_are_functions_after_submodule_imports():
    for name in promptintern.__all__:
        assert callable(getattr(promptintern, name)) and not isinstance(getattr(promptintern, name), type(json))


def test_train_infer_export_from_python(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", baselines=[])
    adapter = promptintern.train(cfg)
    assert (adapter / "adapter_config.json").is_file()
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "What is the lowest salary?"}\n')
    stats = promptintern.infer(tmp_path / "run", queries, tmp_path / "p.jsonl")
    assert stats["n"] == 1 and (tmp_path / "p.jsonl").is_file()
    out = promptintern.export(tmp_path / "run", tmp_path / "adapter-out")
    assert (out / "adapter_config.json").is_file()
    loaded = promptintern.load_config(None, ["schedule.stages=4"])
    assert loaded.schedule.stages == 4
