"""promptintern compare end to end on the SQL example with the tiny model, and its pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_fixtures import SQL_TASK
from promptintern.cli import main
from promptintern.compare import CompareArgs
from promptintern.compare.cost import PriceProfile, break_even, method_costs
from promptintern.compare.plan import Plan, load_compare_config, steps_per_stage
from promptintern.compare.stats import bootstrap_difference, more_data_needed
from promptintern.errors import ConfigError

METHODS = ["full-prompt", "full-prompt+cache", "query-only"]


def _config(tmp: Path) -> Path:
    cfg = {
        "run": {
            "task": str(SQL_TASK), "model": "tiny-random", "method": "promptintern",
            "schedule": {"stages": 2, "k": 1}, "compress": {"model": "tiny-random"},
            "data": {"train_size": 6, "test_size": 4},
            "train": {"per_device_batch_size": 2, "save_steps": 100, "logging_steps": 1},
            "infer": {"max_new_tokens": 3, "batch_size": 2, "progress": False}, "eval": {"bootstrap": 0},
        },
        "compare": {
            "methods": METHODS, "seeds": 2, "budget": "steps", "total_steps": 1, "resamples": 2000,
            "speed": {"lengths": [2, 3], "repeats": 1, "batch_sizes": [2], "queries": 2, "as_served_queries": 2},
            "scaling": {"prompt_lengths": [30, 60], "lengths": [2], "repeats": 1, "queries": 2},
        },
    }
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    config, out = _config(tmp), tmp / "out"
    assert main(["--threads", "1", "compare", str(config), "--out", str(out)]) == 0
    return config, out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_report_structure(compared):
    _, out = compared
    r = _results(out)
    assert r["complete"] and r["pending"] == []
    assert list(r["methods"]) == METHODS and r["metric"] == "sql_execution"
    assert r["plan"]["lr_policy"] == "restart"
    for m in METHODS:
        assert r["methods"][m]["seeds"] == [0, 1] and r["methods"][m]["train_steps"] == [1, 1]
    for m in ("full-prompt+cache", "query-only"):
        d = r["accuracy"]["differences"][m]["full-prompt"]
        assert d["resamples"] == 2000 and d["n_seeds"] == 2 and d["n_items"] == 4
        assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert r["accuracy"]["differences"]["full-prompt"]["query-only"]["seeds"] == [0, 1]
    # speed: every timed generation wrote exactly the longest forced length (shorter ones are read off its
    # clock); the cache holds the template
    for m in METHODS:
        for L in ("2", "3"):
            row = r["speed"]["methods"][m]["forced"][L]
            assert row["new_tokens"] == [3] and row["timed_from_length"] == 3 and row["latency_s"]["median"] > 0
        forced = r["speed"]["methods"][m]["forced"]
        assert forced["2"]["latency_s"]["median"] < forced["3"]["latency_s"]["median"]
    assert r["speed"]["methods"]["full-prompt+cache"]["forced"]["2"]["cached_prefix_tokens"] > 0
    assert r["speed"]["methods"]["full-prompt"]["forced"]["2"]["cached_prefix_tokens"] == 0
    assert set(r["speedups"]["query-only"]) == {"vs_full-prompt", "vs_full-prompt+cache"}
    # the methods were timed together, so each speed-up has its paired ratios (one per repeat)
    paired = r["speedup_ranges"]["query-only"]["vs_full-prompt"]["2"]
    runs = [r["speed"]["methods"][m]["forced"]["2"]["latency_s_runs"] for m in ("full-prompt", "query-only")]
    assert paired["n"] == 1 and paired["min"] == paired["max"] == runs[0][0] / runs[1][0]
    # scaling: the template was grown/cut to each target length
    pts = r["scaling"]["points"]
    assert [p["target_tokens"] for p in pts] == [30, 60] and all(abs(p["template_tokens"] - p["target_tokens"]) <= 2
                                                                 for p in pts)
    # cost: the cached row pays less for input than the same prompt without the discount
    rows = r["cost"]["profiles"]["gpt-4o-mini-ft"]["methods"]
    assert rows["full-prompt+cache"]["per_query"] < rows["full-prompt+cache"]["per_query_no_cache_discount"]
    assert "break_even_vs_reference" in rows["query-only"] and r["cost"]["reference"] == "full-prompt+cache"
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Accuracy across seeds") < report.index("## Speed at equal")
    for heading in ("## Speed vs recurring-prompt length", "## Cost", "## How the runs were made"):
        assert heading in report
    assert (out / "plots" / "accuracy.png").is_file() and (out / "plots" / "scaling.png").is_file()


def test_statistics_come_from_the_stored_per_item_scores(compared, capsys):
    config, out = compared
    before = _results(out)
    for m in ("full-prompt", "query-only"):  # the per-seed means are the runs' own sql_execution
        assert before["accuracy"]["methods"][m]["per_seed"] == pytest.approx(before["methods"][m]["headline_metric_per_seed"])
    path = out / "runs" / "query-only" / "seed-1" / "metrics.json"
    metrics = json.loads(path.read_text())
    per_item = metrics["systems"]["query-only"]["per_item"]
    item = sorted(per_item)[0]
    old = per_item[item]["sql_execution"]
    per_item[item]["sql_execution"] = not old
    path.write_text(json.dumps(metrics))
    # nothing runs again (every pair is finished); the statistics are recomputed from the files
    assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs"]) == 0
    assert "query-only seed 1: finished earlier, kept" in capsys.readouterr().out
    after = _results(out)
    step = (-100.0 if old else 100.0) / (2 * 4)  # one item of 4, on one seed of 2
    d0 = before["accuracy"]["differences"]["query-only"]["full-prompt"]["diff"]
    d1 = after["accuracy"]["differences"]["query-only"]["full-prompt"]["diff"]
    assert d1 == pytest.approx(d0 + step)
    assert after["accuracy"]["methods"]["query-only"]["per_seed"][1] == pytest.approx(
        before["accuracy"]["methods"]["query-only"]["per_seed"][1] + (-100.0 if old else 100.0) / 4)
    assert after["accuracy"]["methods"]["full-prompt"] == before["accuracy"]["methods"]["full-prompt"]


def test_bootstrap_covers_items_and_seeds():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 5.0, size=(3, 400))
    b = rng.normal(0.0, 5.0, size=(3, 400))
    d = bootstrap_difference(a, b, 10000, seed=1)
    assert d["diff"] == pytest.approx(float((a - b).mean()))
    assert d["significant"] and d["ci95"][0] > 0
    # seed-to-seed spread widens the interval: shift one seed's difference, keep the mean
    shifted = a + np.array([[-3.0], [0.0], [3.0]])
    wide = bootstrap_difference(shifted, b, 10000, seed=1)
    assert wide["diff"] == pytest.approx(d["diff"])
    assert wide["ci95"][1] - wide["ci95"][0] > 2 * (d["ci95"][1] - d["ci95"][0])
    same = bootstrap_difference(a, a, 100)
    assert same["ci95"] == [0.0, 0.0] and not same["significant"]
    need = more_data_needed({"diff": 0.0, "ci95": [-2.0, 2.0], "n_items": 100, "n_seeds": 3}, tolerance=1.0)
    assert need["factor"] == pytest.approx(4.0) and need["items"] == 400 and need["seeds"] == 12


def test_cost_and_break_even():
    p = PriceProfile(input_per_1m=1.0, cached_input_per_1m=0.25, output_per_1m=2.0, training_per_1m=10.0)
    assert p.per_query(1000, 10, cached_tokens=800) == pytest.approx((200 * 1.0 + 800 * 0.25 + 10 * 2.0) / 1e6)
    ref = method_costs(p, {"input_tokens_mean": 1000, "output_tokens_mean": 10, "cached_tokens": 800},
                       {"tokens": 1e5, "wall_s": 3600}, 1.0)
    cand = method_costs(p, {"input_tokens_mean": 50, "output_tokens_mean": 10}, {"tokens": 3e5, "wall_s": 7200}, 1.0)
    be = break_even(cand, ref, "training_hosted")
    saving = ref["per_query"] - cand["per_query"]
    assert be["queries"] == int(np.ceil(2.0 / saving)) and not be["never"]
    assert break_even(ref, cand, "training_hosted")["never"]
    assert break_even(cand, {**ref, "training_hosted": 99.0}, "training_hosted")["queries"] == 0


def test_plan_gives_every_method_the_same_steps_and_seeds(tmp_path):
    run_raw, args = load_compare_config(str(_config(tmp_path)), ["compare.methods=[full-prompt,promptintern]",
                                                                 "compare.total_steps=5", "compare.lr_policy=constant"])
    plan = Plan(run_raw, args, tmp_path / "out")
    assert plan.planned_steps("full-prompt") == [5] and plan.planned_steps("promptintern") == [3, 2]
    cfg = plan.config("promptintern", 1)
    assert cfg.train.seed == 1 and cfg.data.seed == 0 and cfg.data.stage_mode == "slice"
    assert cfg.train.lr_scheduler == "constant" and cfg.train.warmup_ratio == 0.0
    assert [cfg.train.for_stage(i).max_steps_per_stage for i in (0, 1)] == [3, 2]
    assert steps_per_stage(4, 3, revisit=True) == [4, 4, 4]
    run_raw, args = load_compare_config(str(_config(tmp_path)), ["compare.total_steps=5", "compare.lr_policy=one"])
    one = Plan(run_raw, args, tmp_path / "one").config("promptintern", 0)
    assert one.train.lr_span == "run" and one.train.lr_scheduler == plan.base.train.lr_scheduler
    one.train.validate()  # every stage's steps are set, as one schedule across stages needs
    assert Plan(run_raw, args, tmp_path / "one").config("full-prompt", 0).train.lr_span == "run"
    with pytest.raises(ConfigError, match="did you mean 'query-only'"):
        load_compare_config(str(_config(tmp_path)), ["compare.methods=[query-olny]"])
    assert CompareArgs(methods=["full-prompt+cache"]).ordered_methods() == ["full-prompt", "full-prompt+cache"]


def test_speed_repeats_take_turns_across_models(tiny_model, monkeypatch):
    """Methods on different models are timed in turn (A, B, A, B, …), never one after the other,
    so that load changes on a shared machine fall on every method alike."""
    import copy

    from promptintern.compare import speed

    model, tok = tiny_model
    other = copy.deepcopy(model)
    prompts = [[{"role": "user", "content": "list files"}]]
    systems = [speed.make_system("a", model, tok, prompts, False), speed.make_system("b", other, tok, prompts, True)]
    calls, real = [], speed.timed_generate

    def spy(m, *args, **kwargs):
        calls.append("a" if m is model else "b")
        return real(m, *args, **kwargs)

    monkeypatch.setattr(speed, "timed_generate", spy)
    out = speed.measure_interleaved(tok, systems, [2, 3], repeats=3, batch_sizes=[2])
    assert calls[2:8] == ["a", "b"] * 3  # after one warm-up each: the batch-1 repeats in turn
    assert set(out) == {"a", "b"} and out["b"]["2"]["cached_prefix_tokens"] > 0
    assert all(n == 3 for s in out.values() for n in s["3"]["new_tokens"])
