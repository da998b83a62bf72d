"""The README's Python API block, run as written (paths pointed at the tiny SQL example task)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline_fixtures import SQL_TASK, tiny_run_config, write_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("The Python API mirrors the CLI")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, "the README's Python API block is missing"
    return match.group(1)


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
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102  (our own README)
    assert (tmp_path / "runs" / "nl2bash" / "metrics.json").is_file()
    assert namespace["adapter"] == Path("runs/nl2bash/adapter")
    assert namespace["stats"]["n"] == 3 and (tmp_path / "preds.jsonl").is_file()
    assert (tmp_path / "exported" / "config.json").is_file()
    assert (tmp_path / "runs" / "eval" / "metrics.json").is_file() and namespace["scores"]
