"""Which loaded version answers a request for a model name.

A request that names a version gets it; one that does not gets the model's default version, or,
when the model's config sets canary weights, a version drawn per request with those weights. A
model's choice is replaced whole when a load or unload changes it (core/registry.py): a request
resolves (name, version) once, against one choice, and nothing after that depends on the
repository.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.core.repository import ModelConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Choice(Generic[T]):
    """How one model name resolves to one of its serving versions (the registry's loaded
    copies; tests use plain keys)."""

    keys: dict[str, T]  # version, as a client writes it -> what answers
    default: T  # what answers requests naming no version
    split_keys: tuple[T, ...] = ()  # canary: drawn per request ...
    split_edges: tuple[float, ...] = ()  # ... with these cumulative weights (the last is 1)

    def pick(self, version: str | None) -> T | None:
        """What answers; None when `version` is not served."""
        if version:
            return self.keys.get(version)
        if not self.split_keys:
            return self.default
        index = bisect.bisect_right(self.split_edges, random.random())
        return self.split_keys[min(index, len(self.split_keys) - 1)]

    @property
    def default_version(self) -> str:
        return next(v for v, key in self.keys.items() if key == self.default)

    def canary_weight(self, served: T) -> float | None:
        """The share of requests naming no version that `served` answers (canary only)."""
        if served not in self.split_keys:
            return None
        index = self.split_keys.index(served)
        low = self.split_edges[index - 1] if index else 0.0
        return round(self.split_edges[index] - low, 6)


def choose(keys: dict[int, T], config: ModelConfig) -> tuple[Choice[T] | None, list[str]]:
    """The choice over the serving versions `keys`, and what in the config could not be
    honoured (a default or canary version that is not loaded)."""
    if not keys:
        return None, []
    problems = []
    default = config.default_version
    if default is not None and default not in keys:
        problems.append(f"default_version {default} is not loaded; the highest version answers")
        default = None
    chosen = keys[default if default is not None else max(keys)]
    texts = {str(v): key for v, key in sorted(keys.items())}
    if not config.canary:
        return Choice(texts, chosen), problems
    weights = {v: w for v, w in config.canary.items() if v in keys and w > 0}
    missing = sorted(set(config.canary) - set(keys))
    if missing:
        problems.append(f"canary version(s) {missing} are not loaded; their weight is left out")
    if not weights:
        return Choice(texts, chosen), problems
    total = sum(weights.values())
    edges = tuple(itertools.accumulate(w / total for w in weights.values()))
    return Choice(texts, chosen, tuple(keys[v] for v in weights), edges), problems
