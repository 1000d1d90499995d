"""The one check every numeric setting a user writes goes through (suite tables, options).

A setting must be a number of the right kind (an integer where a count is meant; ``true`` is not a
number), finite (``nan`` and ``inf`` pass many comparisons by accident, then poison a loss without
an error), and inside its range. The message names the setting, the range and the value given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from affbench.errors import AffbenchError


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low``/``high`` bounds (None: unbounded), each
    inclusive unless ``open_low``/``open_high``; ``integer`` for counts."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False

    def describe(self) -> str:
        """The range in words: ``an integer of at least 1``, ``a number in (0, 1]``..."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{kind} in {left}{_show(self.low)}, {_show(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'above' if self.open_low else 'of at least'} {_show(self.low)}"
        if self.high is not None:
            return f"{kind} {'below' if self.open_high else 'of at most'} {_show(self.high)}"
        return kind

    def contains(self, value: float) -> bool:
        """Whether ``value`` (already known to be a finite number) lies inside."""
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def check_number(name: str, value: Any, allowed: Range) -> int | float:
    """Return ``value`` as an int or float when it is a finite number inside ``allowed``; else one
    sentence naming the setting.

    Examples
    --------
    >>> check_number("training.lr", 1e-3, Range(0, open_low=True))
    0.001
    >>> check_number("training.epochs", 3, Range(1, integer=True))
    3
    """
    ok_type = isinstance(value, Integral) if allowed.integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)) or not allowed.contains(float(value)):
        raise AffbenchError(f"{name} must be {allowed.describe()}; got {value!r}.")
    return int(value) if allowed.integer else float(value)
