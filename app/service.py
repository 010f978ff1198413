"""The running service: models, routes, pools and batchers, prepared, started and stopped together."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

from app.batching import Batcher, BatchPolicy, TaskInputs
from app.metrics import Metrics
from app.repository import TaskModel, find_artifacts, load_task_model
from app.routing import Route, plan_routes
from app.settings import ConfigError, PoolName, Settings
from app.workers import ModelFile, WorkerPool, WorkerSpec, cpu_layout

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    models: dict[str, TaskModel]
    routes: dict[str, Route]
    specs: dict[PoolName, list[WorkerSpec]]
    metrics: Metrics = field(default_factory=Metrics)
    pools: dict[PoolName, WorkerPool] = field(default_factory=dict)
    batchers: dict[PoolName, Batcher] = field(default_factory=dict)
    draining: bool = False  # set on SIGTERM: readiness fails while in-flight work finishes

    def ready(self) -> bool:
        if self.draining:
            return False
        return bool(self.pools) and all(pool.ready() for pool in self.pools.values())


def _cpu_specs(settings: Settings, models: dict[str, TaskModel], routes: dict[str, Route]) \
        -> list[WorkerSpec]:
    tasks = [task for task, route in routes.items() if route.pool == "cpu"]
    if not tasks:
        return []
    pool = settings.cpu_pool
    cores = pool.cores if pool.cores is not None else sorted(os.sched_getaffinity(0))
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise ConfigError(f"cpu_pool.cores {sorted(cores)} include cores this process may not use "
                          f"(allowed: {sorted(allowed)})")
    try:
        layout = cpu_layout(cores, pool.workers, pool.threads_per_worker)
    except ValueError as exc:
        raise ConfigError(f"cpu_pool: {exc}") from None
    files = {
        task: ModelFile(str(models[task].files[routes[task].variant]),
                        tuple(models[task].manifest.model_inputs))
        for task in tasks
    }
    return [WorkerSpec(index=i, cores=group, threads=pool.threads_per_worker, models=files)
            for i, group in enumerate(layout)]


def prepare_service(settings: Settings) -> Service:
    """Everything that can fail without starting a process: read, verify, route, lay out."""
    folders = find_artifacts(settings.model_repository)
    routes = plan_routes(sorted(folders), settings)
    models = {task: load_task_model(folder, [routes[task].variant])
              for task, folder in folders.items()}
    specs: dict[PoolName, list[WorkerSpec]] = {"cpu": _cpu_specs(settings, models, routes)}
    service = Service(settings=settings, models=models, routes=routes,
                      specs={name: s for name, s in specs.items() if s})
    for route in routes.values():
        if route.fallback_reason:
            service.metrics.route_fallback.labels(route.task, route.requested_pool,
                                                  route.pool).set(1)
    return service


async def start_service(service: Service) -> None:
    """Start worker pools and their batchers; raises if a worker cannot load its models."""
    settings = service.settings
    policy = BatchPolicy(
        max_batch_size=settings.batching.max_batch_size,
        max_batch_tokens=settings.batching.max_batch_tokens,
        max_wait_ms=settings.batching.max_wait_ms,
        max_queue_rows=settings.batching.max_queue_rows,
        min_fill=settings.batching.min_fill,
    )
    for name, specs in service.specs.items():
        pool = WorkerPool(name, specs, settings.worker_start_timeout_s,
                          on_restart=service.metrics.count_restart)
        await pool.start()
        service.pools[name] = pool
        tasks = {
            task: TaskInputs(tuple(service.models[task].manifest.model_inputs),
                             service.models[task].manifest.pad_token_id)
            for task, route in service.routes.items() if route.pool == name
        }
        batcher = Batcher(pool, policy, tasks,
                          on_batch=functools.partial(service.metrics.observe_batch, name),
                          on_drop=functools.partial(service.metrics.count_dropped, name))
        batcher.start()
        service.batchers[name] = batcher
        log.info("pool %s: %d workers serving %s", name, len(specs), sorted(tasks))


async def stop_service(service: Service) -> None:
    for batcher in service.batchers.values():
        await batcher.stop()
    for pool in service.pools.values():
        pool.stop()
