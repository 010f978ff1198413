"""Which pool serves which model (and, for hybrid routes, which rows), decided at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.settings import ConfigError, PoolName, RouteKind, Settings

log = logging.getLogger(__name__)

CPU_VARIANT = "cpu-int8"
CUDA_PROVIDER = "CUDAExecutionProvider"


def pool_variant(pool: PoolName, settings: Settings, cpu_variant: str = CPU_VARIANT) -> str:
    """The artifact variant a pool runs (`cpu_variant`: what a model version runs on the CPU
    pool, fp32 where golden_mismatch: fp32 replaced its INT8 graph)."""
    return cpu_variant if pool == "cpu" else settings.gpu_pool.variant


@dataclass(frozen=True)
class Route:
    """Where a model version's rows go. A hybrid route sends rows of at least `long_length`
    tokens to `long_pool`; rows bound for the GPU go to `spill_pool` while the GPU pool is down
    or saturated."""

    key: str  # the version key (one loaded version of a model) whose rows take this route
    requested_pool: RouteKind
    pool: PoolName  # every row, or a hybrid task's short rows
    variant: str  # what `pool` runs for this task
    long_pool: PoolName | None = None
    long_length: int = 0
    spill_pool: PoolName | None = None
    fallback_reason: str | None = None
    name: str = ""  # the model's name (what routing settings and metrics name)

    @property
    def pools(self) -> tuple[PoolName, ...]:
        """Every pool that must load this version."""
        named = (self.pool, self.long_pool, self.spill_pool)
        return tuple(dict.fromkeys(p for p in named if p is not None))

    @property
    def single_pool(self) -> bool:
        """All rows always go to `pool` (the hot path's shortcut)."""
        return self.long_pool is None and self.spill_pool is None


def gpu_unavailable_reason(settings: Settings) -> str | None:
    """Why the GPU pool cannot run here, found without starting it (None: it may run; its workers
    still check that the provider really initialised)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in settings.gpu_pool.providers if p not in available]
    if not missing:
        return None
    hint = (" install the gpu extra (pip install '.[serve,gpu]': onnxruntime-gpu in place of "
            "onnxruntime) on a machine with an NVIDIA driver") if CUDA_PROVIDER in missing else ""
    return (f"this onnxruntime has no {', '.join(missing)} (it has {', '.join(available)});"
            f"{hint}")


def wants_gpu(names: list[str], settings: Settings) -> bool:
    return any(settings.routing.get(n, settings.default_pool) != "cpu" for n in names)


def plan_routes(names: list[str], settings: Settings, gpu_problem: str | None) \
        -> dict[str, Route]:
    """A route per model name (its `key` is the name until a version takes it); `gpu_problem`
    says why no GPU pool can run (None: it can). Raises ConfigError for routing of unknown names
    or a fallback the settings refuse."""
    unknown = sorted(set(settings.routing) - set(names))
    if unknown:
        raise ConfigError(
            f"routing names model(s) {unknown} that the model repository does not have "
            f"(it has: {sorted(names)})"
        )
    return {name: _route(name, settings, gpu_problem) for name in names}


def _route(name: str, settings: Settings, gpu_problem: str | None) -> Route:
    wanted: RouteKind = settings.routing.get(name, settings.default_pool)
    if wanted != "cpu" and gpu_problem is not None:
        if settings.gpu_fallback == "fail":
            raise ConfigError(
                f"model {name!r} is routed to the gpu pool ({wanted}) but {gpu_problem}; set "
                "gpu_fallback: cpu to serve it on CPU instead"
            )
        log.warning("model %s: routed %s, falling back to cpu: %s", name, wanted, gpu_problem)
        return Route(name, wanted, "cpu", CPU_VARIANT, fallback_reason=gpu_problem, name=name)
    spill: PoolName | None = "cpu" if settings.gpu_pool.spill == "cpu" else None
    if wanted == "gpu":
        return Route(name, wanted, "gpu", pool_variant("gpu", settings), spill_pool=spill,
                     name=name)
    if wanted == "hybrid":
        return Route(name, wanted, "cpu", CPU_VARIANT, long_pool="gpu",
                     long_length=settings.gpu_pool.min_length, spill_pool=spill, name=name)
    return Route(name, wanted, "cpu", CPU_VARIANT, name=name)
