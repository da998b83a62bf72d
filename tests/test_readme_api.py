"""The Python blocks of the README and of the Quickstart's API section, run as written (the
Quickstart's paths pointed at the tiny SQL example task, the README's model made tiny)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline_fixtures import SQL_TASK, tiny_run_config, write_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _api_block() -> str:
    text = QUICKSTART.read_text(encoding="utf-8")
    start = text.index("The Python API mirrors the CLI")
    match = PYTHON_BLOCK.search(text, start)
    assert match, "the Quickstart's Python API block is missing"
    return match.group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's three lines: load the demo config on the SQL example, run it."""
    match = PYTHON_BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "the README's Python example is missing"
    code = match.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 3, code
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    # Weights do not matter here: the same call with the tiny model and one step per stage.
    tiny = ('"model=tiny-random", "compress.model=tiny-random", "train.max_steps_per_stage=1", '
            '"data.test_size=3", "baselines=[]", ')
    assert '["task=examples/sql/task.yaml", ' in code
    code = code.replace('["task=examples/sql/task.yaml", ', '[' + tiny + '"task=examples/sql/task.yaml", ')
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102  (our own README)
    assert (tmp_path / "runs" / "sql-api" / "metrics.json").is_file()
    assert namespace["metrics"]


def test_readme_python_api_block_runs(tmp_path, monkeypatch):
    code = _api_block()
    assert "import promptintern\n" in code and "promptintern.evaluate.evaluate_file(" in code
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    write_config(tmp_path / "configs" / "nl2bash.yaml",
                 tiny_run_config("runs/nl2bash", baselines=[], schedule={"stages": 2, "k": 1},
                                 train={"max_steps_per_stage": 1, "per_device_batch_size": 2},
                                 infer={"max_new_tokens": 4, "progress": False}, eval={"bootstrap": 0}))
    tests = [json.loads(line) for line in SQL_TASK.with_name("test.jsonl").read_text().splitlines()][:3]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"id": r["id"], "query": r["query"]}) + "\n" for r in tests))
    # The block names the NL2Bash task for scoring; the queries here are the SQL example's.
    code = code.replace('evaluate_file("nl2bash",', f'evaluate_file({str(SQL_TASK)!r},')
    namespace: dict = {}
    exec(compile(code, str(QUICKSTART), "exec"), namespace)  # noqa: S102  (our own docs)
    assert (tmp_path / "runs" / "nl2bash" / "metrics.json").is_file()
    assert namespace["adapter"] == Path("runs/nl2bash/adapter")
    assert namespace["stats"]["n"] == 3 and (tmp_path / "preds.jsonl").is_file()
    assert (tmp_path / "exported" / "config.json").is_file()
    assert (tmp_path / "runs" / "eval" / "metrics.json").is_file() and namespace["scores"]
