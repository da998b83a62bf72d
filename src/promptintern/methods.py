"""Methods compared by promptintern: one code path, only the schedule and serving prompt differ.

Each method declares the stage points it trains on and the single point (τ, k) it is served
with, so training and evaluation cannot disagree about which prompt a method uses.

| method          | trains on                               | served with        |
|-----------------|-----------------------------------------|--------------------|
| base            | nothing (the base model)                | (τ0, K) full prompt|
| full-prompt     | 1 stage at (τ0, K)                      | (τ0, K)            |
| query-only      | 1 stage at (0, 0)                       | (0, 0)             |
| compressed      | 1 stage at (τc, K)                      | (τc, K)            |
| template-only   | τ follows the schedule, k stays K       | (0, K)             |
| examples-only   | τ stays τ0, k follows the schedule      | (τ0, 0)            |
| promptintern    | the schedule, down to (0, 0)            | (0, 0) query alone |
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import ConfigError
from .schedule import Schedule, StagePoint

METHOD_NAMES = ("promptintern", "full-prompt", "query-only", "compressed", "template-only", "examples-only", "base")


@dataclass(frozen=True)
class MethodPlan:
    """What a method trains on and what prompt it is served with."""

    name: str
    points: tuple[StagePoint, ...]
    serve_tau: float
    serve_k: int

    @property
    def trains(self) -> bool:
        return bool(self.points)


def plan(method: str, schedule: Schedule, compressed_tau: float = 0.3) -> MethodPlan:
    """The :class:`MethodPlan` of ``method`` under ``schedule`` (see the module table)."""
    result = _plan(method, schedule, compressed_tau)
    if method in SCHEDULED:
        _check_ends_at_serving_point(result)
    return result


# Methods that train along the schedule: their last stage must be the prompt they are served with.
SCHEDULED = ("promptintern", "template-only", "examples-only")


def _check_ends_at_serving_point(p: MethodPlan) -> None:
    """Refuse a schedule whose last stage trains on another prompt than the one served."""
    last = p.points[-1]
    if abs(last.tau - p.serve_tau) > 1e-9 or last.k != p.serve_k:
        raise ConfigError(
            f"method {p.name!r} is served at (τ, k) = ({p.serve_tau:g}, {p.serve_k}) but its schedule's last stage "
            f"trains at ({last.tau:g}, {last.k}); use schedule.stages >= 2 or end a custom schedule there"
        )


def _plan(method: str, schedule: Schedule, compressed_tau: float) -> MethodPlan:
    tau0, k0 = schedule.tau0, schedule.k
    if method == "promptintern":
        return MethodPlan(method, tuple(schedule.points()), 0.0, 0)
    if method == "full-prompt":
        return MethodPlan(method, (StagePoint(0, tau0, k0),), tau0, k0)
    if method == "query-only":
        return MethodPlan(method, (StagePoint(0, 0.0, 0),), 0.0, 0)
    if method == "compressed":
        if not 0.0 <= compressed_tau <= 1.0:
            raise ConfigError(f"compressed_tau must be in [0, 1], got {compressed_tau}")
        return MethodPlan(method, (StagePoint(0, compressed_tau, k0),), compressed_tau, k0)
    if method == "template-only":
        pts = tuple(StagePoint(p.index, p.tau, k0) for p in schedule.points())
        return MethodPlan(method, pts, 0.0, k0)
    if method == "examples-only":
        pts = tuple(StagePoint(p.index, tau0, p.k) for p in schedule.points())
        return MethodPlan(method, pts, tau0, 0)
    if method == "base":
        return MethodPlan(method, (), tau0, k0)
    near = difflib.get_close_matches(method, METHOD_NAMES, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"unknown method {method!r}{hint} (choose one of {', '.join(METHOD_NAMES)})")
