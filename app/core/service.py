"""The running service: models, routes, pools and batchers, prepared, started and stopped together."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.core.batching import Batcher, BatchPolicy, Runner, TaskInputs
from app.core.metrics import Metrics
from app.core.repository import TaskModel, artifact_folders, load_task_model
from app.core.routing import Route, plan_routes
from app.runtime.cpu_quota import usable_cores
from app.runtime.workers import ModelFile, WorkerPool, WorkerSpec, cpu_layout
from app.settings import ConfigError, PoolName, Settings
from contract.artifact import ArtifactError, read_manifest

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    models: dict[str, TaskModel]
    routes: dict[str, Route]
    specs: dict[PoolName, list[WorkerSpec]]
    metrics: Metrics = field(default_factory=Metrics)
    pools: dict[PoolName, Pool] = field(default_factory=dict)
    batchers: dict[PoolName, Batcher] = field(default_factory=dict)
    draining: bool = False  # set on SIGTERM: readiness fails while in-flight work finishes
    # Tasks (or folders) whose artifact failed its checks under artifact_errors: skip -> why.
    unavailable: dict[str, str] = field(default_factory=dict)

    def ready(self) -> bool:
        if self.draining:
            return False
        return bool(self.pools) and all(pool.ready() for pool in self.pools.values())


# One API process per this many usable cores: one API core answers ~4,000-5,000 requests/s
# (docs/benchmarks.md), what 8 or more worker cores produce with the models served here.
CORES_PER_API_PROCESS = 8


@dataclass(frozen=True)
class Shard:
    """Which API process this is (`index` of `count`); it owns every count-th worker."""

    index: int = 0
    count: int = 1


def api_process_count(settings: Settings) -> int:
    """settings.api_processes, or one per CORES_PER_API_PROCESS usable cores."""
    if settings.api_processes is not None:
        return settings.api_processes
    cores = settings.cpu_pool.cores or usable_cores()
    return max(1, len(cores) // CORES_PER_API_PROCESS)


def _cpu_specs(settings: Settings, models: dict[str, TaskModel], routes: dict[str, Route],
               shard: Shard) -> list[WorkerSpec]:
    tasks = [task for task, route in routes.items() if route.pool == "cpu"]
    if not tasks:
        return []
    pool = settings.cpu_pool
    cores = pool.cores if pool.cores is not None else usable_cores()
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise ConfigError(f"cpu_pool.cores {sorted(cores)} include cores this process may not use "
                          f"(allowed: {sorted(allowed)})")
    try:
        layout = cpu_layout(cores, pool.workers, pool.threads_per_worker)
    except ValueError as exc:
        raise ConfigError(f"cpu_pool: {exc}") from None
    in_workers = settings.tokenize == "workers" and settings.limits.truncation != "chunk"
    files = {task: _model_file(models[task], routes[task], in_workers) for task in tasks}
    if shard.count > len(layout):
        raise ConfigError(f"api_processes is {shard.count} but the cpu pool has {len(layout)} "
                          "workers; each API process needs at least one (lower api_processes)")
    return [WorkerSpec(index=i, cores=group, threads=pool.threads_per_worker, models=files,
                       spin_s=pool.spin_ms / 1000)
            for i, group in enumerate(layout) if i % shard.count == shard.index]


def _model_file(model: TaskModel, route: Route, tokenizer: bool) -> ModelFile:
    manifest = model.manifest
    return ModelFile(str(model.files[route.variant]), tuple(manifest.model_inputs),
                     str(model.folder / manifest.tokenizer) if tokenizer else None,
                     manifest.max_length, manifest.pad_token_id, manifest.problem_type)


class _Loader:
    """Reads the model repository, keeping or refusing broken artifacts as configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.unavailable: dict[str, str] = {}

    def failed(self, name: str, error: ArtifactError) -> None:
        if self.settings.artifact_errors == "fail":
            raise error
        root = str(self.settings.model_repository.resolve())
        # Paths relative to the repository: error bodies never show the server's file system.
        reason = str(error).replace(root + "/", "").replace(f"{self.settings.model_repository}/", "")
        log.error("artifact %s is unavailable: %s", name, reason)
        self.unavailable[name] = reason

    def _stride(self) -> int | None:
        limits = self.settings.limits
        return limits.chunk_stride if limits.truncation == "chunk" else None

    def manifests(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in artifact_folders(self.settings.model_repository):
            try:
                task = read_manifest(folder).task
                if task in found:
                    raise ArtifactError(f"task {task!r} is in both {found[task]} and {folder}; "
                                        "keep one artifact per task in the model repository")
            except ArtifactError as exc:
                self.failed(folder.name, exc)
                continue
            found[task] = folder
        return found

    def models(self, folders: dict[str, Path], routes: dict[str, Route]) -> dict[str, TaskModel]:
        loaded: dict[str, TaskModel] = {}
        for task, folder in folders.items():
            try:
                loaded[task] = load_task_model(folder, [routes[task].variant], self._stride())
            except ArtifactError as exc:
                self.failed(task, exc)
                continue
            served = loaded[task].manifest.variants[routes[task].variant]
            if served.batch_invariant is False:
                log.warning("task %s: %s is not batch-invariant (%s quantization): a text's "
                            "answer can change with what it is batched with; rebuild with "
                            "--int8 static", task, routes[task].variant, served.quantization)
        if not loaded:
            raise ArtifactError("no artifact could be loaded: " + "; ".join(
                f"{name}: {why}" for name, why in self.unavailable.items()))
        return loaded


def prepare_service(settings: Settings, shard: Shard | None = None) -> Service:
    """Everything that can fail without starting a process: read, verify, route, lay out.

    `shard`: this API process's share of the workers (default: the count from the settings, and
    this is the first; the tier's other processes pass their own)."""
    if shard is None:
        shard = Shard(0, api_process_count(settings))
    loader = _Loader(settings)
    folders = loader.manifests()
    all_routes = plan_routes(sorted(folders), settings)
    models = loader.models(folders, all_routes)
    routes = {task: route for task, route in all_routes.items() if task in models}
    specs: dict[PoolName, list[WorkerSpec]] = {"cpu": _cpu_specs(settings, models, routes, shard)}
    service = Service(settings=settings, models=models, routes=routes,
                      specs={name: s for name, s in specs.items() if s},
                      unavailable=loader.unavailable)
    for route in routes.values():
        if route.fallback_reason:
            service.metrics.route_fallback.labels(route.task, route.requested_pool,
                                                  route.pool).set(1)
    return service


class Pool(Runner, Protocol):
    """What the service needs of a pool beyond running batches (WorkerPool, or a test's fake)."""

    name: str
    restarts: int

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    def describe(self) -> list[dict[str, Any]]: ...

    def stop(self) -> None: ...


PoolFactory = Callable[[str, list[WorkerSpec], Service], Pool]


def worker_pool(name: str, specs: list[WorkerSpec], service: Service) -> Pool:
    """The real pool: pinned worker processes."""
    return WorkerPool(name, specs, service.settings.worker_start_timeout_s,
                      on_restart=service.metrics.count_restart)


async def start_service(service: Service, make_pool: PoolFactory = worker_pool) -> None:
    """Start worker pools and their batchers; raises if a worker cannot load its models.
    `make_pool` builds each pool (tests pass one that runs no processes)."""
    settings = service.settings
    policy = BatchPolicy(
        max_batch_size=settings.batching.max_batch_size,
        max_batch_tokens=settings.batching.max_batch_tokens,
        max_wait_ms=settings.batching.max_wait_ms,
        max_queue_rows=settings.batching.max_queue_rows,
        min_fill=settings.batching.min_fill,
    )
    for name, specs in service.specs.items():
        pool = make_pool(name, specs, service)
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
