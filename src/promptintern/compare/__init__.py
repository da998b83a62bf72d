"""``promptintern compare``: should I internalize my prompt? An honest side-by-side for one task.

Every (method, seed) is a run of the library's own pipeline; accuracy statistics come from the
per-item scores each run stores in its metrics.json; speed is measured at forced answer lengths;
cost counts prompt caching and training. See :mod:`.plan`, :mod:`.budget` (how much each method
trains), :mod:`.reuse` (stage 0 not trained twice), :mod:`.stats`, :mod:`.verdict`, :mod:`.speed`,
:mod:`.cost`, :mod:`.curves` and :mod:`.report`.
"""

from .core import PASSES, compare, verdict
from .plan import METHODS, CompareArgs

__all__ = ["METHODS", "PASSES", "CompareArgs", "compare", "verdict"]
