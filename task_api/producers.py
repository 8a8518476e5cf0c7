"""Producers' shares of the fleet (CONTRACT §9): fair-share weights, create rates, pending quotas.

The queue asks this for each producer's fair-share step (the SQL that places a task in line is
``sql.FAIR_KEY_*``) and for the limits a create must pass; the limits' state lives in the
database, so every API replica enforces the fleet's limit, not its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Producers:
    weights: Mapping[str, float] = field(default_factory=dict)  # default 1
    rates: Mapping[str, float] = field(default_factory=dict)  # creates per second; absent: unlimited
    max_pending: Mapping[str, int] = field(default_factory=dict)  # absent: unlimited

    def fair_step(self, producer: str) -> float:
        """How far apart in line a producer's waiting tasks are: a producer of weight 3 gets
        three tasks in for each one of a producer of weight 1."""
        return 1.0 / self.weights.get(producer, 1.0)

    def limited(self, producer: str) -> bool:
        return producer in self.rates or producer in self.max_pending
