"""The highest offered rate whose p99 stays within a latency SLO with nothing failed or refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.openloop import StepResult

StepFn = Callable[[float], StepResult]


@dataclass
class Capacity:
    slo_ms: float
    rps: float | None  # None: even the first rate missed the SLO
    bounded: bool  # False: max_rate still met the SLO (capacity is at least rps)
    steps: list[StepResult] = field(default_factory=list)


def ladder(start: float, stop: float, growth: float) -> list[float]:
    """start, start x growth, ... below stop, then stop itself."""
    if start <= 0 or growth <= 1 or stop < start:
        raise ValueError("need 0 < start <= stop and growth > 1")
    rates = []
    rate = start
    while rate < stop:
        rates.append(rate)
        rate *= growth
    return [*rates, stop]


def find_capacity(step: StepFn, slo_ms: float, start_rate: float, max_rate: float,
                  growth: float = 2.0, tolerance: float = 0.05, max_refinements: int = 6) -> Capacity:
    """Grow the rate geometrically until a step misses the SLO, then bisect between the last pass
    and the first miss until they are within `tolerance` of each other."""
    result = Capacity(slo_ms=slo_ms, rps=None, bounded=True)
    passed: float | None = None
    failed: float | None = None
    for rate in ladder(start_rate, max_rate, growth):
        outcome = step(rate)
        result.steps.append(outcome)
        if not outcome.meets(slo_ms):
            failed = rate
            break
        passed = rate
    if passed is None:
        return result
    if failed is None:
        result.rps, result.bounded = passed, False
        return result
    for _ in range(max_refinements):
        if (failed - passed) / failed <= tolerance:
            break
        middle = (passed + failed) / 2
        outcome = step(middle)
        result.steps.append(outcome)
        if outcome.meets(slo_ms):
            passed = middle
        else:
            failed = middle
    result.rps = passed
    return result
