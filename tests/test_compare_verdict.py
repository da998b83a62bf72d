"""The verdict from constructed per-item scores: no recommendation without signal, cost at matched
answer length, ties, and a cheaper method that is also more accurate."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from promptintern.compare import CompareArgs, verdict
from promptintern.compare.cost import PriceProfile, break_even, method_costs
from promptintern.compare.report import verdict_text
from promptintern.compare.stats import above_floor, accuracy

N_ITEMS, SEEDS = 60, 2


def _hits(rate: float, seed: int) -> list[float]:
    """Per-item scores (100 / 0) with about ``rate`` of the items right, one row per seed."""
    rng = np.random.default_rng(seed)
    return [100.0 * float(x) for x in rng.random(N_ITEMS) < rate]


def _results(scores: dict[str, list[list[float]]], tokens: dict[str, tuple[float, float, float]]) -> dict:
    """results.json's parts the verdict reads, computed by the real statistics and cost code."""
    sc = {m: {s: {str(i): v for i, v in enumerate(row)} for s, row in enumerate(rows)} for m, rows in scores.items()}
    acc = accuracy(sc, ["full-prompt"], 2000, 0)
    acc["floor"] = above_floor(sc, 2000, 0)
    methods = {m: {"input_tokens_mean": i, "output_tokens_mean": o, "cached_tokens": c}
               for m, (i, o, c) in tokens.items()}
    profile = PriceProfile()
    rows = {m: method_costs(profile, t, {"tokens": 0.0, "wall_s": 0.0}, 0.1) for m, t in methods.items()}
    ref = "full-prompt+cache" if "full-prompt+cache" in rows else "full-prompt"
    for row in rows.values():
        row["break_even_vs_reference"] = {b: break_even(row, rows[ref], b) for b in ("training_hosted", "training_compute")}
    return {"methods": methods, "accuracy": acc, "statistic": "sql_execution (mean over items)", "complete": True,
            "pending": [], "cost": {"reference": ref, "compute_per_hour": 0.1,
                                    "profiles": {profile.name: {"prices": asdict(profile), "methods": rows}}}}


TOKENS = {"full-prompt": (900.0, 30.0, 0.0), "query-only": (60.0, 30.0, 0.0), "promptintern": (60.0, 30.0, 0.0)}


def test_an_all_zero_reference_recommends_nothing():
    """The held-out SQL case: full-prompt FT and PromptIntern both 0 on every item; a zero interval
    between them used to read as 'as accurate' and PromptIntern won for its short answers."""
    zero = [[0.0] * N_ITEMS] * SEEDS
    r = _results({"full-prompt": zero, "promptintern": zero, "query-only": [_hits(0.08, s) for s in range(SEEDS)]},
                 {**TOKENS, "promptintern": (60.0, 20.7, 0.0), "query-only": (60.0, 32.6, 0.0)})
    assert r["accuracy"]["differences"]["promptintern"]["full-prompt"]["ci95"] == [0.0, 0.0]
    assert r["accuracy"]["methods"]["full-prompt"]["ci95"] == [0.0, 0.0]
    lo, hi = r["accuracy"]["methods"]["query-only"]["ci95"]
    assert lo < r["accuracy"]["methods"]["query-only"]["mean"] < hi  # the accuracy's own seed-and-item interval
    v = verdict(r, CompareArgs())
    r["verdict"] = v
    assert not v["decided"] and v["learned"] is False and "cheapest_as_accurate" not in v
    assert v["floor"]["degenerate"] and not v["floor"]["above"]
    text = verdict_text(r)
    assert text.startswith("**Not learned at this budget.**") and "Use `" not in text


def test_a_broken_but_short_method_is_never_recommended():
    """PromptIntern at the floor with the shortest answers: as served it is the cheapest per query,
    but it is not above the floor, and the winner is ranked at matched answer length."""
    ref = [_hits(0.6, s) for s in range(SEEDS)]
    r = _results({"full-prompt": ref, "query-only": [list(row) for row in ref],
                  "promptintern": [[0.0] * N_ITEMS] * SEEDS},
                 {**TOKENS, "promptintern": (55.0, 3.0, 0.0)})  # runaway-free but empty answers
    costs = r["cost"]["profiles"]["gpt-4o-mini-ft"]["methods"]
    assert costs["promptintern"]["per_query"] < costs["query-only"]["per_query"]  # cheapest as served
    v = verdict(r, CompareArgs())
    assert v["learned"] and v["at_floor"] == ["promptintern"] and v["cheapest_as_accurate"] == "query-only"
    r["verdict"] = v
    assert "`promptintern`" in verdict_text(r).split("Not resolved above the floor")[1]


def test_matched_answer_length_decides_between_two_accurate_methods():
    """A method with slightly longer prompts but far shorter answers is cheaper as served, not at
    matched answer length: the one with the shorter prompt wins."""
    ref = [_hits(0.6, s) for s in range(SEEDS)]
    r = _results({"full-prompt": ref, "query-only": ref, "promptintern": ref},
                 {**TOKENS, "query-only": (60.0, 30.0, 0.0), "promptintern": (70.0, 5.0, 0.0)})
    costs = r["cost"]["profiles"]["gpt-4o-mini-ft"]["methods"]
    assert costs["promptintern"]["per_query"] < costs["query-only"]["per_query"]
    v = verdict(r, CompareArgs())
    assert v["cheapest_as_accurate"] == "query-only" and set(v["as_accurate"]) == {"full-prompt", "query-only",
                                                                                  "promptintern"}
    assert v["matched_cost_per_query"]["query-only"] < v["matched_cost_per_query"]["promptintern"]


def test_ties_keep_the_first_and_a_cheaper_method_that_is_more_accurate_says_so():
    ref = [_hits(0.5, s) for s in range(SEEDS)]
    r = _results({"full-prompt": ref, "query-only": ref, "promptintern": ref}, TOKENS)
    v = verdict(r, CompareArgs())  # same scores, same matched cost: the earlier method
    assert v["cheapest_as_accurate"] == "query-only" and not v["more_accurate"]
    assert v["diff"]["ci95"] == [0.0, 0.0] and v["decided"]
    better = [[100.0 if i < 40 else x for i, x in enumerate(row)] for row in ref]
    r = _results({"full-prompt": ref, "query-only": ref, "promptintern": better},
                 {**TOKENS, "promptintern": (50.0, 30.0, 0.0)})
    v = verdict(r, CompareArgs())
    r["verdict"] = v
    assert v["cheapest_as_accurate"] == "promptintern" and v["more_accurate"]
    assert "also **more accurate**" in verdict_text(r)
    assert v["per_query_saving"] == pytest.approx((900.0 - 50.0) * 0.30 / 1e6)


def test_worse_and_undecided_methods():
    ref = [_hits(0.6, s) for s in range(SEEDS)]
    worse = [[0.0 if i % 2 else x for i, x in enumerate(row)] for row in ref]  # about half the hits lost
    unsure = [[0.0 if i % 12 == 0 else x for i, x in enumerate(row)] for row in ref]  # a few lost
    r = _results({"full-prompt": ref, "query-only": worse, "promptintern": unsure}, TOKENS)
    v = verdict(r, CompareArgs(tolerance=1.0))
    assert v["worse"] == ["query-only"] and v["cheapest_as_accurate"] == "full-prompt"
    assert [u["method"] for u in v["undecided"]] == ["promptintern"] and not v["decided"]


def test_a_one_seed_verdict_says_its_intervals_cover_the_items_only():
    """With one training seed the bootstrap cannot see the spread between training runs: the verdict says so."""
    better = {"full-prompt": [_hits(0.4, 0)], "promptintern": [_hits(0.9, 1)], "query-only": [_hits(0.3, 2)]}
    r = _results(better, TOKENS)
    r["verdict"] = verdict(r, CompareArgs())
    assert "**One training seed**" in verdict_text(r)
    two = {m: [*rows, _hits(0.5, 9)] for m, rows in better.items()}
    r = _results(two, TOKENS)
    r["verdict"] = verdict(r, CompareArgs())
    assert "One training seed" not in verdict_text(r)
