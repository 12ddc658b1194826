"""The one ratio of a measured value to its baseline, shared by the report, timing, compare and bench.

A module of its own (no imports) so that any of them can use it without an import cycle.
"""

from __future__ import annotations

import math


def ratio(value: float, baseline: float) -> float:
    """`value / baseline`: what a method costs as a fraction of the unpruned baseline (1.0 = the same).

    - baseline > 0: `value / baseline`;
    - baseline == 0 and value == 0: 1.0. Nothing happened in either run (no decode step, no visual token
      in a text-only input), so nothing changed; a zero-removal run keeps every ratio at exactly 1.0;
    - anything else (a value against a zero baseline, a negative baseline, a NaN): NaN, a ratio that
      means nothing, never an invented number.
    """
    if baseline > 0:
        return value / baseline
    if baseline == 0 and value == 0:
        return 1.0
    return math.nan
