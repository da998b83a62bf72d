"""A student trained on the teacher's answers (``data.teacher_answers``): which stages get them,
what never sees them (retrieval pool, validation), the refusals, the resume guard, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_fixtures import SQL_TASK, tiny_run_config, write_config
from promptintern.cli import main
from promptintern.config import DataArgs, RunConfig
from promptintern.configtools import from_dict, load_yaml
from promptintern.errors import ConfigError, DataError, RunDirError
from promptintern.schedule import StagePoint
from promptintern.stages import build_stages
from promptintern.tasks import get_task
from promptintern.tasks.base import Instance
from promptintern.teacher_answers import add_teacher_records, check_teacher_rows, read_teacher_answers

TEACHER_ROWS = [
    {"id": "new-1", "query": "Which employees earn the most?", "answer": "SELECT name FROM employees;",
     "source": "teacher", "teacher": "x"},
    {"id": "new-2", "query": "Name every department in the company.", "answer": "SELECT name FROM departments;",
     "source": "teacher", "teacher": "x"},
]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def _stages(which: str, teacher_point=None):
    task = get_task(str(SQL_TASK))
    labelled = [Instance(f"l{i}", f"labelled question {i}", f"SELECT {i};") for i in range(3)]
    rows = [Instance(r["id"], r["query"], r["answer"]) for r in TEACHER_ROWS]
    points = [StagePoint(0, 1.0, 1), StagePoint(1, 0.5, 1), StagePoint(2, 0.0, 0)]
    template_at = lambda tau: task.template  # noqa: E731  (the rate does not matter here)
    shots = {i.id: [labelled[0]] for i in labelled + rows}
    base = build_stages(task, labelled, points, template_at, shots, teacher_point=teacher_point)
    return add_teacher_records(base, task, rows, which, template_at, shots, teacher_point), base


def test_last_stage_alone_gets_the_teacher_rows_in_its_own_prompt():
    stages, base = _stages("last")
    ids = [[r.id for r in s.records] for s in stages]
    assert ids[0] == ids[1] == ["l0", "l1", "l2"]
    assert ids[2] == ["l0", "l1", "l2", "new-1", "new-2"]
    new = stages[2].records[3]
    assert new.answer == TEACHER_ROWS[0]["answer"]  # the teacher's text, as it wrote it
    assert "Which employees earn the most?" in new.messages[-1]["content"]
    assert "labelled question 0" not in new.messages[-1]["content"]  # stage 2 is k=0: no examples
    assert stages[2].records[:3] == base[2].records  # the labelled records are untouched


def test_all_puts_the_teacher_rows_in_every_stage_with_that_stages_examples():
    stages, _ = _stages("all")
    assert all([r.id for r in s.records][-2:] == ["new-1", "new-2"] for s in stages)
    assert "labelled question 0" in stages[0].records[-1].messages[-1]["content"]  # k=1 there


def test_kl_rows_carry_the_teacher_prompt():
    stages, _ = _stages("last", teacher_point=StagePoint(0, 1.0, 1))
    new = stages[2].records[-1]
    assert new.teacher_messages is not None and new.teacher_messages != new.messages
    assert "labelled question 0" in new.teacher_messages[-1]["content"]


def test_malformed_teacher_files_are_one_line_errors(tmp_path):
    good = json.dumps(TEACHER_ROWS[0])
    cases = {
        "json": [good, '{"id": "a", "query": '],
        "missing": ['{"id": "a", "query": "q"}'],
        "empty_answer": ['{"id": "a", "query": "q", "answer": "  "}'],
        "query_type": ['{"id": "a", "query": 3, "answer": "x"}'],
        "dup": [good, good],
        "utf8": [b'{"id": "a", "query": "caf\xe9", "answer": "x"}'],
        "none": [""],
    }
    for name, lines in cases.items():
        with pytest.raises(DataError) as err:
            read_teacher_answers(_lines(tmp_path / f"{name}.jsonl", lines))
        assert "\n" not in str(err.value) and f"{name}.jsonl" in str(err.value), name


def test_leakage_and_labelled_id_collisions_are_refused():
    rows = [Instance("n1", "A new question?", "x"), Instance("n2", "what is the TEST question", "y")]
    held = {"test": [Instance("t", "What is the test question?", "z")]}
    with pytest.raises(DataError, match="1 of 2 queries equal held-out queries.*1 in test"):
        check_teacher_rows(rows, [], held, "f.jsonl")
    with pytest.raises(DataError, match="1 teacher answer id.*'n1'"):
        check_teacher_rows(rows[:1], [Instance("n1", "labelled", "a")], held, "f.jsonl")
    check_teacher_rows(rows[:1], [Instance("l1", "labelled", "a")], held, "f.jsonl")  # clean rows pass


def test_config_fields_validate_and_stay_out_of_the_fingerprint_when_unset():
    assert "teacher_answers" not in RunConfig().identity()["data"]
    assert "teacher_rows_loss" not in RunConfig().identity()["train"]
    with_file = from_dict(RunConfig, {"data": {"teacher_answers": "t.jsonl"}, "train": {"teacher_rows_loss": "ce"}},
                          where="config")
    assert with_file.identity()["data"]["teacher_stages"] == "last"
    assert with_file.identity()["train"]["teacher_rows_loss"] == "ce"
    assert with_file.fingerprint() != RunConfig().fingerprint()
    with pytest.raises(ConfigError, match="teacher_stages"):
        DataArgs(teacher_stages="first").validate()
    # The default learns the teacher's rows by KL to the teacher, which the config must then name.
    with pytest.raises(ConfigError, match="set train.teacher to its adapter"):
        from_dict(RunConfig, {"data": {"teacher_answers": "t.jsonl"}}, where="config")
    with pytest.raises(ConfigError, match="no teacher rows to learn"):
        from_dict(RunConfig, {"train": {"teacher_rows_loss": "kl"}}, where="config")


def _cfg(tmp_path: Path, teacher: Path, train_size: int = 8) -> Path:
    cfg = tiny_run_config(tmp_path / "run", baselines=[])
    cfg["data"] = {"train_size": train_size, "teacher_answers": str(teacher)}
    cfg.setdefault("train", {})["teacher_rows_loss"] = "ce"
    return write_config(tmp_path / "c.yaml", cfg)


def test_pool_and_validation_exclude_the_teacher_rows_and_a_changed_file_is_refused(tmp_path):
    from promptintern.config import load_config
    from promptintern.pipeline import opened

    teacher = _write_rows(tmp_path / "teacher.jsonl", TEACHER_ROWS)
    cfg = load_config(str(_cfg(tmp_path, teacher)))
    with opened(cfg, resume=False, force=False) as (prep, run_dir, _):
        new_ids = {r["id"] for r in TEACHER_ROWS}
        assert {i.id for i in prep.teacher} == new_ids
        assert not new_ids & {i.id for i in prep.retriever.pool}
        assert prep.validation and not new_ids & {i.id for i in prep.validation}
        last = [r.id for r in prep.stages[-1].records]
        assert set(last[-2:]) == new_ids and not new_ids & {r.id for r in prep.stages[0].records}
        assert json.loads((run_dir / "run.json").read_text())["inputs"]["teacher_answers"]["sha256"]
    _write_rows(teacher, TEACHER_ROWS[:1])
    with (pytest.raises(RunDirError, match=r"teacher_answers data: data.teacher_answers .*teacher.jsonl changed"),
          opened(cfg, resume=True, force=False)):
        pass


def test_refused_teacher_files_write_nothing(tmp_path, capsys):
    test_query = json.loads((SQL_TASK.parent / "test.jsonl").read_text().splitlines()[0])["query"]
    train_id = json.loads((SQL_TASK.parent / "train.jsonl").read_text().splitlines()[0])["id"]
    cases = {
        "leak": [{**TEACHER_ROWS[0], "query": test_query.upper()}],
        "collision": [{**TEACHER_ROWS[0], "id": train_id}],
        "malformed": [{"id": "a", "query": "q"}],
    }
    for name, rows in cases.items():
        where = tmp_path / name
        where.mkdir()
        cfg = _cfg(where, _write_rows(where / "teacher.jsonl", rows), train_size=20)  # every train id labelled
        rc = main(["run", str(cfg)])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and err.count("\n") == 0 and "teacher" in err, (name, err)
        assert not (where / "run").exists(), name


def test_cli_teacher_labels_new_queries_and_a_kl_student_trains_on_them(tiny_model, tmp_path, capsys, monkeypatch):
    """Teacher run → queries --from-train → label → student run with KL to the teacher, all by the CLI."""
    teacher_cfg = tiny_run_config(tmp_path / "teacher", method="full-prompt", schedule={"stages": 1, "k": 1},
                                  baselines=[], infer={"max_new_tokens": 8, "batch_size": 4, "progress": False})
    teacher_cfg["data"] = {"train_size": 8}
    teacher_yaml = write_config(tmp_path / "teacher.yaml", teacher_cfg)
    assert main(["train", str(teacher_yaml)]) == 0
    queries = tmp_path / "new.jsonl"
    assert main(["queries", str(teacher_yaml), "--from-train", "6", "--out", str(queries)]) == 0
    (tmp_path / "acceptall.py").write_text("def ok(query, answer):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    labelled = tmp_path / "teacher-answers.jsonl"
    assert main(["label", "--teacher", str(tmp_path / "teacher"), "--queries", str(queries), "--out", str(labelled),
                 "--check", "acceptall:ok", "--max-new-tokens", "4"]) == 0
    said = capsys.readouterr().out
    assert "teacher answered 6" in said
    assert labelled.is_file()
    # A random model never ends an answer by itself, so label's length check rejects every answer
    # (kept 0): the student's file is made of the teacher's own raw answers from label's cache, in
    # label's row format, as label would have kept them had they ended.
    raw = [json.loads(x) for x in Path(f"{labelled}.teacher.jsonl").read_text().splitlines()]
    text = {q["id"]: q["query"] for q in map(json.loads, queries.read_text().splitlines())}
    rows = [{"id": r["id"], "query": text[r["id"]], "answer": r["prediction"].strip() or "SELECT 1;",
             "source": "teacher"} for r in raw]
    answers = _write_rows(tmp_path / "student-rows.jsonl", rows)
    student = tiny_run_config(tmp_path / "student", baselines=[],
                              train={"max_steps_per_stage": 2, "per_device_batch_size": 2, "save_steps": 1,
                                     "logging_steps": 1, "loss": "kl", "teacher": str(tmp_path / "teacher" / "adapter"),
                                     "teacher_cache": True})
    student["data"] = {"train_size": 8, "teacher_answers": str(answers)}
    assert main(["run", str(write_config(tmp_path / "student.yaml", student))]) == 0
    stage_rows = [json.loads(x) for x in (tmp_path / "student" / "stages" / "stage-1.jsonl").read_text().splitlines()]
    taught = [r for r in stage_rows if r["id"] in {row["id"] for row in rows}]
    assert len(taught) == len(rows) and all(r["teacher_messages"] for r in taught)
    assert {r["answer"] for r in taught} == {row["answer"] for row in rows}
    stage0 = [json.loads(x)["id"] for x in (tmp_path / "student" / "stages" / "stage-0.jsonl").read_text().splitlines()]
    assert len(stage0) == 8 and not {row["id"] for row in rows} & set(stage0)
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["n_teacher_answers"] == len(rows) and metrics["schedule"][1]["n"] == 8 + len(rows)
    last = json.loads((tmp_path / "student" / "train" / "history.json").read_text())["stages"][1]
    assert last["n_records"] == 8 + len(rows) and "kl" in last["log_history"][0]  # trained by KL to the teacher


def test_compare_refuses_teacher_answers_rather_than_mis_budget_them(tmp_path):
    from promptintern.compare.plan import Plan, load_compare_config
    from test_compare import _config

    teacher = _write_rows(tmp_path / "teacher.jsonl", TEACHER_ROWS)
    run_raw, args = load_compare_config(str(_config(tmp_path)), [f"data.teacher_answers={teacher}", "train.teacher_rows_loss=ce"])
    with pytest.raises(ConfigError, match="compare labels new queries itself"):
        Plan(run_raw, args, tmp_path / "out")


def test_the_mix_keeps_at_most_the_given_teacher_rows_per_labelled_pair():
    from promptintern.teacher_answers import mix

    rows = [Instance(f"t{i}", f"new {i}", "a") for i in range(10)]
    assert mix(rows, 3, None, 0) == rows and mix(rows, 3, 4.0, 0) == rows  # all of them fit
    kept = mix(rows, 3, 2.0, 0)
    assert len(kept) == 6 and kept == [r for r in rows if r in kept]  # a sample, in the file's order
    assert kept == mix(rows, 3, 2.0, 0) and kept != mix(rows, 3, 2.0, 1)  # seeded
    with pytest.raises(ConfigError, match="teacher_rows_per_pair"):
        DataArgs(teacher_rows_per_pair=0.0).validate()
    assert "teacher_rows_per_pair" not in RunConfig().identity()["data"]


def test_a_run_config_names_the_new_queries_and_its_teacher_labels_them(tiny_model, tmp_path, capsys):
    """`run` with a teacher_data section: the teacher run answers held-out training queries once, the
    student learns them by KL to that teacher; a rerun labels nothing again; bad sections are one line."""
    import promptintern.new_queries as nq

    teacher_cfg = tiny_run_config(tmp_path / "teacher", method="full-prompt", schedule={"stages": 1, "k": 1},
                                  baselines=[], infer={"max_new_tokens": 4, "batch_size": 4, "progress": False})
    teacher_cfg["data"] = {"train_size": 8}
    assert main(["train", str(write_config(tmp_path / "teacher.yaml", teacher_cfg))]) == 0
    (tmp_path / "acceptall.py").write_text("def ok(query, answer):\n    return True\n")
    student = tiny_run_config(tmp_path / "student", baselines=[],
                              train={"max_steps_per_stage": 2, "per_device_batch_size": 2, "save_steps": 1,
                                     "logging_steps": 1, "teacher_cache": True})
    student["data"] = {"train_size": 8}
    student["teacher_data"] = {"teacher": str(tmp_path / "teacher"), "from_train": 5, "check": "acceptall:ok"}
    path = write_config(tmp_path / "student.yaml", student)
    real = nq.filter_answers  # a random model never ends an answer: lift the length rule only (tested above)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        mp.setattr(nq, "filter_answers", lambda rows, queries, cap, check: real(rows, queries, 10**9, check))
        assert main(["run", str(path)]) == 0
        assert "teacher answered 5, kept 5" in capsys.readouterr().err
        answers = tmp_path / "student" / "teacher-data" / "answers.jsonl"
        before = answers.stat().st_mtime_ns
        assert main(["run", str(path), "--resume"]) == 0
        assert answers.stat().st_mtime_ns == before and "teacher answered" not in capsys.readouterr().err
    last = [json.loads(x) for x in (tmp_path / "student" / "stages" / "stage-1.jsonl").read_text().splitlines()]
    taught = [r for r in last if r.get("from_teacher")]
    assert len(taught) == 5 and all(r["teacher_messages"] for r in taught)  # KL to the teacher run's adapter
    saved = load_yaml(str(tmp_path / "student" / "config.yaml"))
    assert saved["train"]["teacher"] == str(tmp_path / "teacher" / "adapter")
    assert saved["train"]["teacher_rows_loss"] == "kl"
    for bad, message in (({"from_train": 5}, "name the run that answers"),
                         ({"teacher": str(tmp_path), "from_train": 5}, "not a promptintern run directory")):
        student["teacher_data"] = bad
        assert main(["run", str(write_config(tmp_path / "bad.yaml", student))]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_teacher_adapter_of_another_base_model_is_one_line_and_writes_nothing(tiny_model, tmp_path, capsys):
    """An adapter trained on another base would, applied to this run's base, be a model nobody trained."""
    import shutil

    from promptintern.models import resolve_model_path

    teacher_cfg = tiny_run_config(tmp_path / "teacher", method="full-prompt", schedule={"stages": 1, "k": 1},
                                  baselines=[], train={"max_steps_per_stage": 1, "per_device_batch_size": 2})
    teacher_cfg["data"] = {"train_size": 4}
    assert main(["train", str(write_config(tmp_path / "teacher.yaml", teacher_cfg))]) == 0
    adapter = tmp_path / "teacher" / "adapter"
    other = tmp_path / "other-base"  # tiny-random with another vocabulary size: another model
    shutil.copytree(resolve_model_path("tiny-random"), other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    student = tiny_run_config(tmp_path / "student", baselines=[],
                              train={"max_steps_per_stage": 1, "loss": "kl", "teacher": str(adapter)})
    path = write_config(tmp_path / "student.yaml", student)
    ok = main(["train", str(path)])  # the run's own base: accepted
    assert ok == 0
    shutil.rmtree(tmp_path / "student")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(other)}))
    capsys.readouterr()
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an adapter of the base model" in err[0] and str(other) in err[0], err
    assert not (tmp_path / "student").exists()
