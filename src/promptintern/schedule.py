"""Stage schedules: how fast the template rate τ and the example count k shrink.

Stage ``i = 0..N-1`` trains at the point ``(τ_i, k_i)``. With ``t = i / (N - 1)`` (``t = 0``
when ``N = 1``) and a decay curve ``f`` with ``f(0) = 1`` and ``f(1) = 0``:

    τ_i = τ0 · f_τ(t)        k_i = round(K · f_k(t))   (round half up, then kept non-increasing)

Curves (the paper compared these three and found linear best; the formulas are ours, see
docs/paper.md):

- ``linear``:              f(t) = 1 − t
- ``exponential``:         f(t) = (exp(−λt) − exp(−λ)) / (1 − exp(−λ))   (falls fast early)
- ``inverse_exponential``: f(t) = 1 − (exp(λt) − 1) / (exp(λ) − 1)       (falls slowly early)
- ``custom``:              the values listed in ``custom_tau`` / ``custom_k``, used as given.

Every built-in curve reaches (0, 0), the query alone, at the last stage, so a PromptIntern
schedule needs ``N ≥ 2``; with ``N = 1`` the only stage is ``t = 0``, i.e. the full prompt
``(τ0, K)``, and ``method: promptintern`` refuses such a schedule (see :mod:`promptintern.methods`).
Baselines train on single fixed points (:func:`promptintern.methods.plan`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

SHAPES = ("linear", "exponential", "inverse_exponential", "custom")
_ROUND_EPS = 1e-9  # K·f(t) = 1.4999999999 from float error still rounds to 2 when it means 1.5


@dataclass(frozen=True)
class StagePoint:
    """The prompt of one stage: template rate ``tau`` in [0, 1] and ``k`` retrieved examples."""

    index: int
    tau: float
    k: int


@dataclass
class Schedule:
    """A decreasing schedule of (τ, k) over ``stages`` training stages."""

    stages: int = field(default=3, metadata={"help": "number of stages N (≥ 2 to reach the query alone)"})
    shape: str = field(
        default="linear",
        metadata={"help": "curve of τ: linear | exponential | inverse_exponential | custom"},
    )
    tau0: float = field(default=1.0, metadata={"help": "template rate τ0 of stage 0, in [0, 1] (1 = whole template)"})
    k: int = field(default=3, metadata={"help": "K, the number of retrieved examples at stage 0"})
    k_shape: str | None = field(
        default=None, metadata={"help": "curve of k (same choices as shape); empty = same as shape"}
    )
    lam: float = field(default=3.0, metadata={"help": "λ > 0, steepness of the exponential curves"})
    custom_tau: list[float] | None = field(
        default=None, metadata={"help": "τ of each stage when shape is custom (N non-increasing values in [0, 1])"}
    )
    custom_k: list[int] | None = field(
        default=None, metadata={"help": "k of each stage when k_shape is custom (N non-increasing integers ≥ 0)"}
    )

    @property
    def effective_k_shape(self) -> str:
        return self.shape if self.k_shape is None else self.k_shape

    def validate(self) -> None:
        """Raise a one-line :class:`ConfigError` for any value the schedule cannot use."""
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ConfigError(f"schedule.stages must be an integer ≥ 1, got {self.stages!r}")
        if not _is_number(self.tau0) or not 0.0 <= self.tau0 <= 1.0:
            raise ConfigError(f"schedule.tau0 must be in [0, 1], got {self.tau0!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"schedule.k (K) must be an integer ≥ 0, got {self.k!r}")
        if not _is_number(self.lam) or self.lam <= 0:
            raise ConfigError(f"schedule.lam (λ) must be > 0, got {self.lam!r}")
        _check_shape("shape", self.shape)
        if self.k_shape is not None:
            _check_shape("k_shape", self.k_shape)
        self._check_custom("custom_tau", self.custom_tau, self.shape == "custom")
        self._check_custom("custom_k", self.custom_k, self.effective_k_shape == "custom")

    def _check_custom(self, name: str, values: list | None, used: bool) -> None:
        which = "shape" if name == "custom_tau" else "k_shape"
        if not used:
            if values is not None:
                raise ConfigError(f"schedule.{name} is set but {which} is not 'custom'; set {which}: custom or drop it")
            return
        if values is None:
            raise ConfigError(f"schedule.{which} is 'custom' but schedule.{name} is not set (give {self.stages} values)")
        if len(values) != self.stages:
            raise ConfigError(f"schedule.{name} has {len(values)} values but stages = {self.stages}; give one per stage")
        for i, v in enumerate(values):
            if name == "custom_k":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"schedule.custom_k[{i}] must be an integer, got {v!r}")
                if v < 0:
                    raise ConfigError(f"schedule.custom_k[{i}] must be ≥ 0, got {v}")
            elif not _is_number(v) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"schedule.custom_tau[{i}] must be in [0, 1], got {v!r}")
            if i and v > values[i - 1]:
                raise ConfigError(
                    f"schedule increases at stage {i}: {name} goes from {values[i - 1]} to {v}; "
                    "values must not increase"
                )

    def points(self) -> list[StagePoint]:
        """The (τ_i, k_i) of every stage, validated first (see the module docstring)."""
        self.validate()
        n = self.stages
        ts = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        if self.shape == "custom":
            taus = [float(v) for v in self.custom_tau or []]
        else:
            taus = [self.tau0 * decay(self.shape, t, self.lam) for t in ts]
        if self.effective_k_shape == "custom":
            ks = [int(v) for v in self.custom_k or []]
        else:
            ks = [round_half_up(self.k * decay(self.effective_k_shape, t, self.lam)) for t in ts]
        taus, ks = _non_increasing(taus), _non_increasing(ks)
        return [StagePoint(index=i, tau=taus[i], k=ks[i]) for i in range(n)]


def decay(shape: str, t: float, lam: float = 3.0) -> float:
    """f(t) of ``shape`` for ``t`` in [0, 1]: 1 at t = 0, 0 at t = 1, non-increasing.

    The exponential forms are written with ``expm1`` so they stay exact for tiny λ and do
    not overflow for huge λ (``exp(λ)`` is never computed).
    """
    if shape == "linear":
        value = 1.0 - t
    elif shape == "exponential":
        # (e^{-λt} - e^{-λ}) / (1 - e^{-λ}) = e^{-λt} (1 - e^{-λ(1-t)}) / (1 - e^{-λ})
        value = math.exp(-lam * t) * -math.expm1(-lam * (1.0 - t)) / -math.expm1(-lam)
    elif shape == "inverse_exponential":
        # (e^{λt} - 1) / (e^{λ} - 1) = e^{λ(t-1)} (1 - e^{-λt}) / (1 - e^{-λ})
        value = 1.0 - math.exp(lam * (t - 1.0)) * -math.expm1(-lam * t) / -math.expm1(-lam)
    else:
        _check_shape("shape", shape)
        raise ConfigError(f"shape {shape!r} has no formula (custom schedules list their values)")
    return min(1.0, max(0.0, value))


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5 + _ROUND_EPS))


def _non_increasing(values: list) -> list:
    out = []
    for v in values:
        out.append(v if not out else min(v, out[-1]))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_shape(name: str, shape: Any) -> None:
    if shape in SHAPES:
        return
    near = difflib.get_close_matches(str(shape), SHAPES, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"unknown schedule.{name} {shape!r}{hint} (choose one of {', '.join(SHAPES)})")
