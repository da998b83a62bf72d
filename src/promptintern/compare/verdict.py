"""The verdict: which method to use, said only where the data carry a signal.

Rules, in order:

1. No full-prompt FT result, no verdict.
2. Full-prompt FT not resolved above the floor (the base model on the same items, else the
   metric's 0; see :func:`.stats.above_floor`): the task was not learned at this budget, and
   nothing is recommended — two models that learned nothing are not "as accurate" as each other.
3. A method is *as accurate* when it is itself resolved above the floor and the lower end of its
   interval against full-prompt FT is within ``tolerance`` points.
4. Among those, the cheapest wins, cost per query taken at *matched answer length* (every
   method's input and cached tokens, full-prompt FT's output tokens): as-served output length
   would reward a broken model whose answers are short. Ties keep the earlier method (the
   reference first). When the winner's interval lies wholly above full-prompt FT, it says so.
"""

from __future__ import annotations

from typing import Any

from .cost import PriceProfile
from .stats import more_data_needed

REFERENCE = "full-prompt"


def matched_cost(results: dict[str, Any], profile: str, method: str) -> float:
    """Dollars per query of ``method`` at full-prompt FT's answer length (its own prompt tokens)."""
    prices = PriceProfile(**results["cost"]["profiles"][profile]["prices"])
    m, ref = results["methods"][method], results["methods"][REFERENCE]
    return prices.per_query(m["input_tokens_mean"], ref["output_tokens_mean"], m.get("cached_tokens", 0.0))


def verdict(results: dict[str, Any], args: Any) -> dict[str, Any]:
    """The cheapest method as accurate as full-prompt FT and above the floor, or why there is none."""
    tol, diffs = args.tolerance, results["accuracy"]["differences"]
    floor = results["accuracy"].get("floor", {})
    profile = args.cost.profiles[0].name
    ref_cost = results["cost"]["reference"]
    if REFERENCE not in results["methods"] or ref_cost not in results["methods"]:
        return {"decided": False, "learned": None, "text": "the full-prompt FT reference has not finished yet: no verdict"}
    ref_floor = floor.get(REFERENCE)
    if ref_floor is None or not ref_floor["above"]:
        return {"decided": False, "learned": False, "floor": ref_floor,
                "text": _not_learned(ref_floor, results.get("statistic") or "accuracy")}
    cost = {m: matched_cost(results, profile, m) for m in results["methods"]}
    as_accurate, undecided, worse, at_floor = [ref_cost], [], [], []
    for m in results["methods"]:
        d = diffs.get(m, {}).get(REFERENCE)
        if m in (REFERENCE, ref_cost) or d is None:
            continue
        if not floor.get(m, {}).get("above"):
            at_floor.append(m)
        elif d["ci95"][0] >= -tol:
            as_accurate.append(m)
        elif d["ci95"][1] < -tol:
            worse.append(m)
        else:
            undecided.append({"method": m, "diff": d["diff"], "ci95": d["ci95"], "more": more_data_needed(d, tol)})
    best = min(as_accurate, key=lambda m: cost[m])  # min keeps the first of equal costs
    out: dict[str, Any] = {
        "decided": True, "learned": True, "tolerance": tol, "profile": profile, "reference": ref_cost,
        "cost_basis": "per query at full-prompt FT's answer length", "matched_cost_per_query": cost,
        "cheapest_as_accurate": best, "as_accurate": as_accurate, "worse": worse, "at_floor": at_floor,
        "undecided": [u for u in undecided if cost[u["method"]] < cost[best]]}
    if best != ref_cost:
        d = diffs[best][REFERENCE]
        costs = results["cost"]["profiles"][profile]["methods"]
        out.update(diff=d, more_accurate=d["ci95"][0] > 0, per_query_saving=cost[ref_cost] - cost[best],
                   break_even=costs[best]["break_even_vs_reference"])
    out["decided"] = not out["undecided"]
    return out


def _not_learned(ref_floor: dict[str, Any] | None, stat: str) -> str:
    if ref_floor is None:
        return "full-prompt FT has no scores to set against the floor: no verdict"
    why = ("every item scored alike, so its interval resolves nothing" if ref_floor["degenerate"]
           else f"its interval against {ref_floor['vs']} is [{ref_floor['ci95'][0]:+.2f}, {ref_floor['ci95'][1]:+.2f}]")
    return (f"**Not learned at this budget.** Full-prompt FT is not resolved above {ref_floor['vs']} "
            f"({ref_floor['diff']:+.2f} points of {stat}; {why}), so no method can be shown as accurate as a "
            "trained reference: nothing is recommended. Train longer, on more pairs, or check the task.")
