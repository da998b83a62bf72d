"""Schedules: formulas at hand-computed points, endpoints, monotonicity and validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptintern.errors import ConfigError
from promptintern.schedule import (
    SHAPES,
    Schedule,
    StagePoint,
    decay,
    round_half_up,
)

CURVES = [s for s in SHAPES if s != "custom"]


def taus(s: Schedule) -> list[float]:
    return [p.tau for p in s.points()]


def ks(s: Schedule) -> list[int]:
    return [p.k for p in s.points()]


def test_linear_points_by_hand():
    s = Schedule(stages=5, shape="linear", tau0=1.0, k=4)
    assert s.points() == [
        StagePoint(0, 1.0, 4),
        StagePoint(1, 0.75, 3),
        StagePoint(2, 0.5, 2),
        StagePoint(3, 0.25, 1),
        StagePoint(4, 0.0, 0),
    ]


def test_default_schedule_is_three_linear_stages():
    assert [(p.tau, p.k) for p in Schedule().points()] == [(1.0, 3), (0.5, 2), (0.0, 0)]


def test_exponential_by_hand():
    # λ = 3, t = 0.25: (e^-0.75 - e^-3) / (1 - e^-3) = (0.472367 - 0.049787) / 0.950213 = 0.444721
    assert decay("exponential", 0.25, 3.0) == pytest.approx(0.444721, abs=1e-6)
    # t = 0.5: (0.223130 - 0.049787) / 0.950213 = 0.182426
    assert decay("exponential", 0.5, 3.0) == pytest.approx(0.182426, abs=1e-6)
    s = Schedule(stages=5, shape="exponential", tau0=0.8, k=4, lam=3.0)
    assert taus(s) == pytest.approx([0.8, 0.8 * 0.444721, 0.8 * 0.182426, 0.8 * 0.058526, 0.0], abs=1e-6)
    # K·f = 4, 1.779, 0.730, 0.234, 0 → 4, 2, 1, 0, 0
    assert ks(s) == [4, 2, 1, 0, 0]


def test_inverse_exponential_by_hand():
    # λ = 3, t = 0.75: 1 - (e^2.25 - 1) / (e^3 - 1) = 1 - 8.487736 / 19.085537 = 0.555279
    assert decay("inverse_exponential", 0.75, 3.0) == pytest.approx(0.555279, abs=1e-6)
    s = Schedule(stages=5, shape="inverse_exponential", k=4, lam=3.0)
    assert taus(s) == pytest.approx([1.0, 0.941474, 0.817574, 0.555279, 0.0], abs=1e-6)
    # K·f = 4, 3.766, 3.270, 2.221, 0
    assert ks(s) == [4, 4, 3, 2, 0]


def test_inverse_is_mirror_of_exponential():
    for t in (0.1, 0.3, 0.5, 0.9):
        assert decay("inverse_exponential", t, 2.0) == pytest.approx(1 - decay("exponential", 1 - t, 2.0))


@pytest.mark.parametrize("shape", CURVES)
def test_endpoints(shape):
    s = Schedule(stages=4, shape=shape, tau0=0.7, k=5)
    pts = s.points()
    assert (pts[0].tau, pts[0].k) == (0.7, 5)
    assert (pts[-1].tau, pts[-1].k) == (0.0, 0)
    assert [p.index for p in pts] == [0, 1, 2, 3]


@pytest.mark.parametrize("shape", CURVES)
def test_single_stage_is_full_prompt(shape):
    assert Schedule(stages=1, shape=shape, tau0=0.6, k=2).points() == [StagePoint(0, 0.6, 2)]


def test_extreme_lambda_is_stable():
    for lam in (1e-9, 1e4):
        for shape in ("exponential", "inverse_exponential"):
            vals = taus(Schedule(stages=6, shape=shape, lam=lam))
            assert all(math.isfinite(v) for v in vals)
            assert vals[0] == 1.0 and vals[-1] == 0.0
    # λ → 0 tends to the linear curve
    assert decay("exponential", 0.3, 1e-9) == pytest.approx(0.7, abs=1e-6)


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, 0.0)] == [1, 2, 3, 2, 0]
    assert round_half_up(3 * 0.5) == 2  # Python's round(1.5) == 2 but round(2.5) == 2
    assert ks(Schedule(stages=3, k=5)) == [5, 3, 0]  # 2.5 → 3


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    tau0=st.floats(0.0, 1.0),
    k=st.integers(0, 10),
    lam=st.floats(0.1, 10.0),
    shape=st.sampled_from(CURVES),
    k_shape=st.sampled_from([None, *CURVES]),
)
def test_monotone_and_typed(n, tau0, k, lam, shape, k_shape):
    pts = Schedule(stages=n, shape=shape, tau0=tau0, k=k, k_shape=k_shape, lam=lam).points()
    assert len(pts) == n
    for a, b in zip(pts, pts[1:], strict=False):
        assert b.tau <= a.tau and b.k <= a.k
    for p in pts:
        assert type(p.k) is int and 0 <= p.k <= k
        assert 0.0 <= p.tau <= tau0
    assert (pts[0].tau, pts[0].k) == (tau0, k)
    if n > 1:
        assert (pts[-1].tau, pts[-1].k) == (0.0, 0)


def test_tau_and_k_follow_different_shapes():
    s = Schedule(stages=5, shape="linear", k_shape="inverse_exponential", k=4)
    assert taus(s) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert ks(s) == [4, 4, 3, 2, 0]
    s = Schedule(stages=3, shape="exponential", k_shape="custom", custom_k=[3, 3, 0])
    assert ks(s) == [3, 3, 0]
    assert taus(s)[1] == pytest.approx(decay("exponential", 0.5, 3.0))


def test_custom_lists():
    s = Schedule(stages=3, shape="custom", custom_tau=[1.0, 0.5, 0.1], custom_k=[2, 2, 1])
    assert s.points() == [StagePoint(0, 1.0, 2), StagePoint(1, 0.5, 2), StagePoint(2, 0.1, 1)]
    # custom τ, k from a curve
    s = Schedule(stages=3, shape="custom", k_shape="linear", k=4, custom_tau=[0.9, 0.9, 0.0])
    assert [(p.tau, p.k) for p in s.points()] == [(0.9, 4), (0.9, 2), (0.0, 0)]


def test_dict_round_trip():
    """Through configtools, the path a run config's ``schedule:`` section takes."""
    from promptintern.configtools import from_dict, to_dict

    s = Schedule(stages=4, shape="exponential", k_shape="linear", lam=2.0, k=5)
    d = to_dict(s)
    assert d["shape"] == "exponential" and d["k_shape"] == "linear"
    assert from_dict(Schedule, d, "schedule") == s
    assert from_dict(Schedule, {"stages": 2, "tau0": 1}, "schedule").tau0 == 1.0
    with pytest.raises(ConfigError, match="unknown key 'stage'; did you mean 'stages'"):
        from_dict(Schedule, {"stage": 2}, "schedule")
    with pytest.raises(ConfigError, match="schedule.lam must be > 0|lam"):
        from_dict(Schedule, {"lam": -1}, "schedule")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"stages": 0}, "stages must be an integer ≥ 1, got 0"),
        ({"stages": 2.5}, "stages must be an integer"),
        ({"tau0": 1.2}, "tau0 must be in [0, 1], got 1.2"),
        ({"tau0": -0.1}, "tau0 must be in [0, 1]"),
        ({"tau0": float("nan")}, "tau0 must be in [0, 1]"),
        ({"k": -1}, "schedule.k (K) must be an integer ≥ 0, got -1"),
        ({"lam": 0.0}, "lam (λ) must be > 0, got 0.0"),
        ({"lam": -2.0}, "lam (λ) must be > 0"),
        ({"shape": "linaer"}, "unknown schedule.shape 'linaer'; did you mean 'linear'?"),
        ({"shape": "exponentail"}, "did you mean 'exponential'?"),
        ({"k_shape": "inverse-exponential"}, "unknown schedule.k_shape 'inverse-exponential'; did you mean 'inverse_exponential'?"),
        ({"shape": "zzz"}, "choose one of linear, exponential, inverse_exponential, custom"),
        ({"shape": "custom"}, "shape is 'custom' but schedule.custom_tau is not set"),
        ({"stages": 2, "shape": "custom", "custom_tau": [1.0, 0.0]}, "k_shape is 'custom' but schedule.custom_k is not set"),
        ({"custom_tau": [1.0, 0.5, 0.0]}, "custom_tau is set but shape is not 'custom'"),
        ({"custom_k": [1, 0, 0]}, "custom_k is set but k_shape is not 'custom'"),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.0], "custom_k": [1, 0, 0]},
            "custom_tau has 2 values but stages = 3",
        ),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.5, 0.0], "custom_k": [1, 0]},
            "custom_k has 2 values but stages = 3",
        ),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.2, 0.5], "custom_k": [1, 0, 0]},
            "schedule increases at stage 2: custom_tau goes from 0.2 to 0.5",
        ),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.5, 0.0], "custom_k": [1, 2, 0]},
            "schedule increases at stage 1: custom_k goes from 1 to 2",
        ),
        (
            {"shape": "custom", "custom_tau": [1.5, 0.5, 0.0], "custom_k": [1, 0, 0]},
            "custom_tau[0] must be in [0, 1], got 1.5",
        ),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.5, 0.0], "custom_k": [2, 1.5, 0]},
            "custom_k[1] must be an integer, got 1.5",
        ),
        (
            {"shape": "custom", "custom_tau": [1.0, 0.5, 0.0], "custom_k": [2, 1, -1]},
            "custom_k[2] must be ≥ 0, got -1",
        ),
    ],
)
def test_validation_messages(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        Schedule(**kwargs).validate()
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError):  # points() validates too
        Schedule(**kwargs).points()
