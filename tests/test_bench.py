"""The benchmark harness: end to end on the SQL example with the tiny model, and its pure parts."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_fixtures import ROOT, tiny_run_config
from promptintern.errors import ConfigError

if str(ROOT) not in sys.path:  # bench/ lives beside src/, not in the installed package
    sys.path.insert(0, str(ROOT))
rb = importlib.import_module("bench.run_bench")

METHODS = ["full-prompt", "full-prompt+prefix-cache", "query-only", "template-only", "promptintern", "promptintern+kl",
           "query-only+kl"]
PER_METHOD = ("input_tokens_mean", "latency_s_mean", "throughput_qps", "train_wall_s", "cost_per_1k_queries",
              "metrics", "ci95", "delta_vs_full_prompt_ci95", "train_steps")


def _bench_yaml(tmp, **bench) -> str:
    run = tiny_run_config(tmp / "unused")
    run["train"].update(save_steps=100)
    run["infer"]["max_new_tokens"] = 4
    cfg = {"run": run, "bench": {"total_steps": 4, "latency_queries": 2, "methods": METHODS, **bench}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    argv = ["--task", "sql", "--config", _bench_yaml(tmp), "--runs", str(tmp / "runs"),
            "--results", str(tmp / "results"), "--threads", "1"]
    assert rb.main(argv) == 0
    return tmp, argv


def _results(tmp) -> dict:
    return json.loads((tmp / "results" / "sql.json").read_text())


def test_results_json_has_the_issue_shape(bench_run):
    tmp, _ = bench_run
    r = _results(tmp)
    assert {"task", "model", "hardware", "date", "scale", "prices", "methods"} <= set(r)
    assert r["task"] == "sql" and r["model"] == "tiny-random" and r["hardware"]
    assert {k: r["scale"][k] for k in ("train", "test", "stages")} == {"train": 20, "test": 5, "stages": 2}
    assert r["prices"]["input_per_1k"] == pytest.approx(0.003) and r["prices"]["output_per_1k"] == pytest.approx(0.006)
    assert r["method_order"] == METHODS and set(r["methods"]) == set(METHODS)
    assert r["complete"] and r["pending"] == []
    for name, m in r["methods"].items():
        assert all(k in m for k in PER_METHOD), name
        assert m["input_tokens_mean"] > 0 and m["latency_s_mean"] > 0 and m["throughput_qps"] > 0
        assert m["latency_n"] == 2 and m["latency_batch_size"] == 1
        assert "sql_execution" in m["metrics"] and len(m["ci95"]["sql_execution"]) == 2
        expected = m["input_tokens_mean"] * 3 / 1000 + m["output_tokens_mean"] * 6 / 1000
        assert m["cost_per_1k_queries"] == pytest.approx(expected)
        assert not m["run_dir"].startswith(str(ROOT))
    fp, pc, pi = (r["methods"][n] for n in ("full-prompt", "full-prompt+prefix-cache", "promptintern"))
    assert fp["delta_vs_full_prompt_ci95"]["sql_execution"] == [0.0, 0.0]
    assert pc["metrics"] == fp["metrics"] and pc["delta_vs_full_prompt_ci95"]["sql_execution"] == [0.0, 0.0]
    assert pc["cached_tokens_mean"] > 0 and pc["throughput_batch_size"] == 1 and fp["throughput_batch_size"] == 8
    assert pi["input_tokens_mean"] < fp["input_tokens_mean"] / 5  # served with the query alone
    assert set(r["comparisons"]) == {"promptintern vs full-prompt", "promptintern vs query-only",
                                     "promptintern+kl vs promptintern", "query-only+kl vs promptintern",
                                     "query-only+kl vs query-only", "promptintern vs template-only"}
    assert r["headline"]["vs_full_prompt"]["input_tokens_saved_pct"] > 80


def test_every_fine_tuned_method_takes_the_same_total_steps(bench_run):
    tmp, _ = bench_run
    r = _results(tmp)
    assert {n: m["train_steps"] for n, m in r["methods"].items()} == dict.fromkeys(METHODS, 4)
    assert r["methods"]["promptintern"]["steps_per_stage"] == [2, 2]
    history = json.loads((tmp / "runs" / "promptintern" / "train" / "history.json").read_text())
    assert [s["steps"] for s in history["stages"]] == [2, 2]


def test_kl_rows_distil_and_count_the_teachers_training(bench_run):
    tmp, _ = bench_run
    r = _results(tmp)
    qkl, pkl, fp = (r["methods"][n] for n in ("query-only+kl", "promptintern+kl", "full-prompt"))
    assert qkl["teacher_from"] == "full-prompt" and qkl["teacher_train_wall_s"] == fp["train_wall_s"]
    assert qkl["train_wall_s"] == pytest.approx(qkl["own_train_wall_s"] + fp["train_wall_s"])
    assert pkl["teacher_wall_s"] > 0 and "teacher_train_wall_s" not in pkl  # self-teacher: no separate training
    train = yaml.safe_load((tmp / "runs" / "query-only+kl" / "config.yaml").read_text())["train"]
    assert train["loss"] == "ce+kl" and train["teacher_cache"] and train["teacher"].endswith("full-prompt/adapter")
    assert any((tmp / "runs" / "query-only+kl" / "train" / "teacher-cache").iterdir())
    md = (tmp / "results" / "sql.md").read_text()
    assert "`query-only+kl` (KL distillation): sql_execution" in md and "vs full-prompt" in md


def test_ablation_pairs_are_compared_and_rendered(bench_run):
    tmp, _ = bench_run
    r = _results(tmp)
    d = r["comparisons"]["promptintern vs template-only"]["sql_execution"]
    pi, to = (r["methods"][n]["metrics"]["sql_execution"] for n in ("promptintern", "template-only"))
    assert d["delta"] == pytest.approx(pi - to) and d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    md = (tmp / "results" / "sql.md").read_text()
    assert f"- Ablation `promptintern` − `template-only`: sql_execution {d['delta']:+.1f}, 95% CI" in md


def test_second_invocation_reruns_nothing(bench_run, capsys):
    tmp, argv = bench_run
    watched = [p for name in METHODS for p in (tmp / "runs" / name).rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in watched}
    results_before = _results(tmp)
    capsys.readouterr()
    assert rb.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, kept") >= len(METHODS)
    assert "pipeline run (" not in out and "latency pass" not in out
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert _results(tmp) == results_before


def test_finished_methods_resume_on_another_machine_from_the_results(bench_run, tmp_path, capsys):
    tmp, argv = bench_run
    shutil.copytree(tmp / "results", tmp_path / "results")  # the committed results; bench/runs is gone
    moved = [a if a != str(tmp / "results") else str(tmp_path / "results") for a in argv]
    moved[moved.index("--runs") + 1] = str(tmp_path / "runs")
    ledger = tmp / "results" / "sql-methods"
    kept = {f.relative_to(ledger) for f in ledger.rglob("*") if f.is_file()}
    assert {Path("full-prompt/bench.json"), Path("full-prompt/predictions/full-prompt.jsonl"),
            Path("full-prompt/metrics.json"), Path("promptintern/train/history.json")} <= kept
    assert not any(".safetensors" in str(f) for f in kept)  # adapters are not kept
    capsys.readouterr()
    assert rb.main(moved) == 0
    out = capsys.readouterr().out
    assert "restored from" in out and all((tmp_path / "runs" / n / "bench.json").is_file() for n in METHODS)
    assert "pipeline run (" not in out and "latency pass" not in out
    assert _results(tmp_path) == _results(tmp)
    # a method that needs an adapter of a restored method says so in one line
    shutil.rmtree(tmp_path / "results" / "sql-methods" / "query-only+kl")
    shutil.rmtree(tmp_path / "runs")
    assert rb.main([*moved, "--methods", "query-only+kl"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("error: query-only+kl needs full-prompt's adapter") and err.count("\n") == 1


def test_markdown_renders_and_render_only_rebuilds_it(bench_run):
    tmp, argv = bench_run
    md_path = tmp / "results" / "sql.md"
    md = md_path.read_text()
    assert "## Headline" in md and "**PromptIntern vs full-prompt FT**" in md
    for name in METHODS:
        assert f"| {name} |" in md
    assert "![sql_execution vs input tokens](sql.png)" in md
    assert (tmp / "results" / "sql.png").read_bytes()[:4] == b"\x89PNG"
    md_path.unlink()
    assert rb.main(["--task", "sql", "--results", str(tmp / "results"), "--render-only"]) == 0
    assert md_path.read_text() == md == rb.render_markdown(_results(tmp))


def test_plan_shows_equal_steps_and_revisit_multiplies_them(bench_run, capsys):
    tmp, argv = bench_run
    assert rb.main([*argv, "--plan", "--methods", "query-only,promptintern,promptintern-revisit"]) == 0
    out = capsys.readouterr().out
    assert "steps [4] = 4" in out and "steps [2, 2] = 4" in out and "steps [4, 4] = 8" in out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert rb.main(["--task", "sql", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert rb.main(["--task", "sql", "--results", str(tmp_path), "--render-only"]) == 2
    assert "no results to render" in capsys.readouterr().err


def test_bench_config_errors(tmp_path):
    path = tmp_path / "b.yaml"
    with pytest.raises(ConfigError, match="unknown method 'promptintren'.*'promptintern'"):
        rb.load_bench_config(_bench_yaml(tmp_path), "default", ["bench.methods=[promptintren]"])
    path.write_text(yaml.safe_dump({"run": {}, "benhc": {}}))
    with pytest.raises(ConfigError, match="unknown top-level key 'benhc'"):
        rb.load_bench_config(path, "default", [])
    run_raw, args = rb.load_bench_config(_bench_yaml(tmp_path), "default",
                                         ["train.stage_overrides={1: {max_steps_per_stage: 9}}"])
    with pytest.raises(ConfigError, match="sets the steps of every stage itself"):
        rb.Bench("sql", "default", run_raw, args, tmp_path / "runs")


@pytest.mark.parametrize("task, minimum", [("nl2bash", 300), ("mbpp", 200)])
def test_shipped_bench_configs_load_at_every_scale(task, minimum):
    from promptintern.config import RunConfig
    from promptintern.configtools import from_dict

    for scale in rb.SCALES:
        run_raw, args = rb.load_bench_config(ROOT / "bench" / "configs" / f"{task}.yaml", scale, [])
        cfg = from_dict(RunConfig, run_raw)
        assert cfg.task == task and set(args.methods) == set(rb.METHODS)
        if scale == "default":
            assert cfg.data.test_size >= minimum and cfg.model == "smollm2-135m"


def test_steps_per_stage():
    assert rb.steps_per_stage(10, 3, revisit=False) == [4, 3, 3]
    assert rb.steps_per_stage(9, 3, revisit=False) == [3, 3, 3]
    assert rb.steps_per_stage(10, 3, revisit=True) == [10, 10, 10]
    assert rb.steps_per_stage(7, 1, revisit=False) == [7]
    assert rb.steps_per_stage(7, 0, revisit=False) == []
    with pytest.raises(ConfigError, match="fewer than the 3 stages"):
        rb.steps_per_stage(2, 3, revisit=False)
    assert rb.derived_total_steps(n_train=21, batch=4, accumulation=1, epochs=1) == 6
    assert rb.derived_total_steps(n_train=21, batch=2, accumulation=2, epochs=1.5) == 9


def test_paired_delta_of_identical_systems_is_exactly_zero():
    from promptintern.evaluate.nl2bash import bleu, bleu_stats

    outcomes = np.random.default_rng(0).integers(0, 2, size=40).astype(float)
    assert rb.paired_delta("exact_match", outcomes, outcomes.copy(), n=200) == {"delta": 0.0, "ci95": [0.0, 0.0]}
    refs = ["ls -l", "find . -name '*.py'", "du -sh .", "grep -r foo .", "wc -l file.txt"] * 4
    hyps = ["ls -la", "find . -name '*.py' -type f", "du -h", "grep foo .", "cat file.txt | wc -l"] * 4
    stats = bleu_stats(hyps, refs)
    assert rb.paired_delta("bleu", stats, stats.copy(), n=200) == {"delta": 0.0, "ci95": [0.0, 0.0]}
    better = rb.paired_delta("bleu", bleu_stats(refs, refs), stats, n=200)
    assert better["delta"] == pytest.approx(100.0 - bleu(hyps, refs)["bleu"])
    assert 0 < better["ci95"][0] <= better["delta"] <= better["ci95"][1]
    worse = rb.paired_delta("pass@1", np.zeros(30), np.ones(30), n=100)
    assert worse == {"delta": -100.0, "ci95": [-100.0, -100.0]}


def _method(tokens, latency, qps, cost, metric, train_s, delta_ci=None):
    return {"input_tokens_mean": tokens, "latency_s_mean": latency, "throughput_qps": qps, "cost_per_1k_queries": cost,
            "train_wall_s": train_s, "train_steps": 36, "metrics": {"bleu": metric}, "ci95": {"bleu": [metric - 3, metric + 3]},
            "delta_vs_full_prompt_ci95": {"bleu": delta_ci} if delta_ci else {}, "served": {"tau": 0.0, "k": 0}}


def _synthetic_results():
    return {
        "task": "nl2bash", "model": "m", "hardware": "cpu", "date": "2026-01-01", "metric": "bleu",
        "scale": {"name": "default", "train": 144, "test": 300, "stages": 3, "total_steps": 36},
        "prices": {"input_per_1k": 0.003, "output_per_1k": 0.006, "source": "test"},
        "methods": {
            "full-prompt": _method(1000, 2.0, 1.0, 3.12, 50.0, 100.0, [0.0, 0.0]),
            "full-prompt+prefix-cache": _method(1000, 0.8, 1.2, 3.12, 50.0, 100.0, [0.0, 0.0]),
            "query-only": _method(100, 0.5, 4.0, 0.42, 47.0, 10.0, [-6.0, 0.0]),
            "compressed": _method(400, 1.0, 2.0, 1.32, 40.0, 40.0, [-14.0, -6.0]),
            "promptintern": _method(100, 0.5, 4.0, 0.42, 48.0, 60.0, [-5.0, 1.0]),
        },
        "comparisons": {"promptintern vs query-only": {"bleu": {"delta": 1.0, "ci95": [-1.0, 3.0]}},
                        "promptintern vs compressed": {"bleu": {"delta": 8.0, "ci95": [4.0, 12.0]}}},
    }


def test_headline_on_synthetic_numbers():
    h = rb.headline(_synthetic_results())
    fp = h["vs_full_prompt"]
    assert fp["input_tokens_saved_pct"] == pytest.approx(90.0)
    assert fp["latency_speedup_x"] == pytest.approx(4.0) and fp["throughput_gain_x"] == pytest.approx(4.0)
    assert fp["cost_saved_pct"] == pytest.approx(100 * (1 - 0.42 / 3.12))
    assert fp["delta"] == pytest.approx(-2.0) and fp["delta_ci95"] == [-5.0, 1.0]
    assert fp["verdict"] == "no significant difference"
    assert h["vs_prefix_cache"]["latency_speedup_x"] == pytest.approx(1.6)
    assert h["vs_query_only"] == {"delta": 1.0, "delta_ci95": [-1.0, 3.0], "verdict": "no significant difference"}
    assert h["vs_compressed"]["verdict"] == "better (significant)"
    findings = " ".join(h["findings"])
    assert "no significant difference to full-prompt FT" in findings
    assert "not measurably better than query-only FT" in findings and "compressed" not in findings
    assert "6.0× query-only FT's training time" in findings
    assert "Most accurate method here: full-prompt (bleu 50.0 vs PromptIntern 48.0)" in findings
    md = rb.render_markdown(_synthetic_results())
    assert "90% fewer input tokens (1000 → 100)" in md and "latency speed-up 4.00×" in md
    assert "bleu -2.0, 95% CI [-5.0, +1.0]" in md
    assert "| promptintern | (0.00, 0) | 36 | 60 | 100 |" in md


def test_headline_without_promptintern_or_reference_degrades_gracefully():
    results = _synthetic_results()
    del results["methods"]["full-prompt"]
    h = rb.headline(results)
    assert "vs_full_prompt" not in h and h["vs_query_only"]["delta"] == pytest.approx(1.0)
    del results["methods"]["promptintern"]
    assert rb.headline(results)["findings"] == []
    assert "needs the promptintern and full-prompt results" in rb.render_markdown(results)


def test_readme_block_is_generated_from_the_results_json(tmp_path):
    from bench.report import README_END, README_START

    r = {**_synthetic_results(), "complete": False, "pending": ["generate"]}
    section = rb.readme_section([r])
    assert section.startswith(README_START) and section.endswith(README_END)
    assert "| nl2bash (bleu) | 144 / 300, 36 | 1000 → 100 | 90% | 4.00× | 4.00× | 87% | -2.0 [-5.0, +1.0] " in section
    assert "| +1.0 [-1.0, +3.0] | +8.0 [+4.0, +12.0] |" in section
    assert "Still to run at this scale: generate." in section and "![nl2bash: bleu vs input tokens]" in section
    r["comparisons"]["promptintern vs template-only"] = {"bleu": {"delta": 2.5, "ci95": [0.5, 4.5]}}
    assert ("- Ablation `promptintern` − `template-only`: bleu +2.5, 95% CI [+0.5, +4.5] (better (significant))."
            in rb.readme_section([r]))
    results = tmp_path / "results"
    results.mkdir()
    (results / "nl2bash.json").write_text(json.dumps(r))
    (results / "nl2bash-small.json").write_text(json.dumps({**r, "task": "small scale: not in the README"}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    assert rb.write_readme(results, readme) == ["nl2bash"]
    text = readme.read_text()
    assert "old table" not in text and "not in the README" not in text
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert rb.readme_section([r], str(results)) in text
    rb.write_readme(results, readme)
    assert readme.read_text() == text  # idempotent
    readme.write_text("# no markers\n")
    with pytest.raises(ConfigError, match="no bench-results markers"):
        rb.write_readme(results, readme)
