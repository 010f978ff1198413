"""Which pool serves which task, decided once at start-up from the settings and the hardware."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.settings import ConfigError, PoolName, Settings

log = logging.getLogger(__name__)

# The artifact variant each pool kind runs.
POOL_VARIANT: dict[PoolName, str] = {"cpu": "cpu-int8", "gpu": "gpu-fp16"}


@dataclass(frozen=True)
class Route:
    task: str
    requested_pool: PoolName
    pool: PoolName
    variant: str
    fallback_reason: str | None = None


def gpu_unavailable_reason() -> str | None:
    """Why no GPU pool can run here, or None when one can.

    This version serves every task on CPU workers: a gpu-routed task always falls back (or fails
    start-up, as configured) and says so in /v1/models and the ffs_route_fallback metric.
    """
    return "this server version has no GPU pool; the task runs on the CPU pool"


def plan_routes(tasks: list[str], settings: Settings) -> dict[str, Route]:
    """A route per task; raise ConfigError for routing of unknown tasks or a refused fallback."""
    unknown = sorted(set(settings.routing) - set(tasks))
    if unknown:
        raise ConfigError(
            f"routing names task(s) {unknown} that the model repository does not have "
            f"(it has: {sorted(tasks)})"
        )
    routes: dict[str, Route] = {}
    gpu_problem = gpu_unavailable_reason()
    for task in tasks:
        wanted: PoolName = settings.routing.get(task, settings.default_pool)
        if wanted == "gpu" and gpu_problem is not None:
            if settings.gpu_fallback == "fail":
                raise ConfigError(
                    f"task {task!r} is routed to the gpu pool but {gpu_problem}; set "
                    "gpu_fallback: cpu to serve it on CPU instead"
                )
            log.warning("task %s: routed to gpu, falling back to cpu: %s", task, gpu_problem)
            routes[task] = Route(task, "gpu", "cpu", POOL_VARIANT["cpu"], gpu_problem)
        else:
            routes[task] = Route(task, wanted, wanted, POOL_VARIANT[wanted])
    return routes
