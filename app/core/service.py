"""The running service: the registry of models, the pools and batchers that run them, the
dispatcher and the metrics, prepared, started and stopped together."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.core.batching import Batcher, BatchPolicy, BatchStats, InputSpec, Runner
from app.core.dispatch import Dispatcher
from app.core.metrics import Metrics
from app.core.registry import NOT_SELECTED, Loaded, Model, Registry
from app.core.repository import (
    LoadedModel,
    ModelEntry,
    golden_mismatch_reason,
    load_model_version,
    scan_repository,
    serve_fp32_instead,
)
from app.core.routing import (
    CPU_VARIANT,
    CUDA_PROVIDER,
    Route,
    gpu_unavailable_reason,
    plan_routes,
    pool_variant,
    wants_gpu,
)
from app.core.statistics import Statistics
from app.core.tracing import Tracing, tracing_from_settings
from app.runtime.workers import ModelFile, WorkerPool, WorkerSpec, cpu_layout
from app.settings import (
    BatchPolicySettings,
    ConfigError,
    GpuPoolSettings,
    PoolName,
    PrioritySettings,
    Settings,
)
from contract.artifact import ArtifactError, Manifest
from contract.cpu_quota import usable_cores
from contract.session import Provider

log = logging.getLogger(__name__)


def slow_cpu_graphs(manifest: Manifest, variants: Iterable[str]) -> list[str]:
    """The variants among `variants` that run on the CPU provider and still hold
    SkipLayerNormalization nodes (artifacts built before the build split them: the same answers,
    slower; docs/benchmarks-log.md "SkipLayerNormalization on the CPU")."""
    return [name for name in variants
            if manifest.variants[name].execution_provider == "CPUExecutionProvider"
            and manifest.variants[name].operators.get("SkipLayerNormalization", 0) > 0]


@dataclass
class Service:
    """What runs: the registry (models, versions, loaded copies), the pools and their batchers,
    the dispatcher that places rows, and the metrics and statistics."""

    settings: Settings
    registry: Registry
    specs: dict[PoolName, list[WorkerSpec]]
    metrics: Metrics = field(default_factory=Metrics)
    statistics: Statistics = field(default_factory=Statistics)  # Triton's statistics extension
    pools: dict[PoolName, Pool] = field(default_factory=dict)
    batchers: dict[PoolName, Batcher] = field(default_factory=dict)
    draining: bool = False  # set on SIGTERM: readiness fails while in-flight work finishes
    shard: Shard = field(default_factory=lambda: Shard())
    dispatcher: Dispatcher | None = None
    tracing: Tracing | None = None  # settings.tracing.enabled (tests put their own exporter)

    def publish(self, model: Model) -> None:
        """The registry switched what answers for `model`: its per-version gauges follow."""
        serving = model.serving()
        for number in model.versions:
            self.metrics.version_ready.labels(model.name, str(number)).set(int(number in serving))
        for number, loaded in serving.items():
            for result in loaded.model.golden.values():
                self.metrics.golden_match.labels(model.name, str(number), result.variant,
                                                 loaded.model.cpu_variant).set(int(result.matches))

    def observe_request(self, name: str, version: str, status: int, seconds: float) -> None:
        """A classify request's final status, in the metrics and the statistics alike."""
        self.metrics.observe_request(name, version, status, seconds)
        self.statistics.request(name, version, status, seconds)

    def observe_batch(self, pool: str, stats: BatchStats) -> None:
        """A batch that ran, in the metrics and the statistics alike."""
        self.metrics.observe_batch(pool, stats)
        self.statistics.batch(stats)

    def ready(self) -> bool:
        """Serving: every pool is up, except a pool whose rows can spill to another."""
        if self.draining or not self.pools:
            return False
        return all(pool.ready() or self.can_spill(name) for name, pool in self.pools.items())

    def route_ready(self, route: Route) -> bool:
        """The route's rows can run now: each pool it uses is up or can spill."""
        return all(p in self.pools and (self.pools[p].ready() or self.can_spill(p))
                   for p in route.pools)

    def can_spill(self, pool: str) -> bool:
        """Every version that uses `pool` has another pool to run its rows while it is down."""
        users = [route for route in self.registry.routes() if pool in route.pools]
        return bool(users) and all(route.spill_pool not in (None, pool) for route in users)

    def fall_back_to_cpu(self, reason: str) -> None:
        """Serve the gpu and hybrid models on the CPU pool alone (the GPU pool failed to start
        and gpu_fallback is cpu)."""
        log.error("the GPU pool cannot run: %s; its models fall back to the CPU pool", reason)
        names = sorted({copy.name for copy in self.registry.copies()})
        by_name = plan_routes(names, self.settings, reason)
        self.registry.reroute(lambda copy: route_for(copy.model, by_name))
        self.specs = lay_out(self.settings, self.registry.copies(), self.shard)
        self.count_fallbacks()

    def count_fallbacks(self) -> None:
        for route in self.registry.routes():
            if route.fallback_reason:
                self.metrics.route_fallback.labels(route.name, route.requested_pool,
                                                   route.pool).set(1)


# One API process per this many usable cores: one API core answers ~4,000-5,000 requests/s
# (docs/benchmarks-log.md), what 8 or more worker cores produce with the models served here.
CORES_PER_API_PROCESS = 8


@dataclass(frozen=True)
class Shard:
    """Which API process this is (`index` of `count`); it owns every count-th worker."""

    index: int = 0
    count: int = 1


def _gpu_configured(settings: Settings) -> bool:
    return settings.default_pool != "cpu" or any(v != "cpu" for v in settings.routing.values())


def gpu_worker_count(settings: Settings) -> int:
    gpu = settings.gpu_pool
    return len(gpu.device_ids) * gpu.instances_per_device


def api_process_count(settings: Settings) -> int:
    """settings.api_processes, or one per CORES_PER_API_PROCESS usable cores (and no more than
    GPU workers when tasks are routed to the GPU: each API process owns at least one)."""
    if settings.api_processes is not None:
        return settings.api_processes
    cores = settings.cpu_pool.cores or usable_cores()
    count = max(1, len(cores) // CORES_PER_API_PROCESS)
    return min(count, gpu_worker_count(settings)) if _gpu_configured(settings) else count


def _core_split(settings: Settings, gpu_workers: int) -> tuple[list[int], list[int]]:
    """(CPU pool cores, GPU worker cores). By default each GPU worker takes one of the last
    usable cores away from the CPU pool, as long as the CPU pool keeps one."""
    usable = sorted(usable_cores())
    cpu = settings.cpu_pool.cores
    gpu = settings.gpu_pool.cores
    if gpu_workers == 0:
        return (cpu if cpu is not None else usable), []
    if gpu is None:
        spare = [core for core in usable if cpu is None or core not in cpu]
        take = min(gpu_workers, len(spare) - (1 if cpu is None else 0))
        gpu = spare[-take:] if take > 0 else usable[-1:]  # too few cores: share the last one
    if cpu is None:
        cpu = [core for core in usable if core not in gpu] or usable
    return cpu, gpu


def lay_out(settings: Settings, copies: list[Loaded], shard: Shard) \
        -> dict[PoolName, list[WorkerSpec]]:
    """Worker specs of each pool some loaded copy needs (this API process's shard of them)."""
    on_gpu = [copy.model for copy in copies if "gpu" in copy.route.pools]
    on_cpu = [copy.model for copy in copies if "cpu" in copy.route.pools]
    cpu_cores, gpu_cores = _core_split(settings, gpu_worker_count(settings) if on_gpu else 0)
    gpu_specs = _gpu_specs(settings, on_gpu, shard, gpu_cores)  # its errors first
    specs = {"cpu": _cpu_specs(settings, on_cpu, shard, cpu_cores), "gpu": gpu_specs}
    return {name: found for name, found in specs.items() if found}  # type: ignore[misc]


def _in_workers(settings: Settings) -> bool:
    return settings.tokenize == "workers" and settings.limits.truncation != "chunk"


def cuda_providers(gpu: GpuPoolSettings, device: int) -> tuple[Provider, ...]:
    """The GPU pool's provider list for one device, with the CUDA options from the settings."""
    options = {"device_id": str(device), "arena_extend_strategy": gpu.arena_extend_strategy,
               "do_copy_in_default_stream": str(int(gpu.copy_in_default_stream))}
    if gpu.gpu_mem_limit_mb is not None:
        options["gpu_mem_limit"] = str(gpu.gpu_mem_limit_mb * 1024 * 1024)
    return tuple((name, options) if name == CUDA_PROVIDER else name for name in gpu.providers)


def _gpu_specs(settings: Settings, models: list[LoadedModel], shard: Shard,
               cores: list[int]) -> list[WorkerSpec]:
    if not models:
        return []
    gpu = settings.gpu_pool
    files = {model.key: _model_file(model, gpu.variant, _in_workers(settings))
             for model in models}
    slots = [device for device in gpu.device_ids for _ in range(gpu.instances_per_device)]
    if shard.count > len(slots):
        raise ConfigError(f"api_processes is {shard.count} but the gpu pool has {len(slots)} "
                          "workers; each API process needs one (lower api_processes or raise "
                          "gpu_pool.instances_per_device)")
    # One intra-op thread: the GPU computes; the worker's core tokenizes and launches kernels.
    return [WorkerSpec(index=i, cores=(cores[i % len(cores)],), threads=1, models=files,
                       providers=cuda_providers(gpu, device), io_binding=gpu.io_binding)
            for i, device in enumerate(slots) if i % shard.count == shard.index]


def _cpu_specs(settings: Settings, models: list[LoadedModel], shard: Shard,
               cores: list[int]) -> list[WorkerSpec]:
    if not models:
        return []
    pool = settings.cpu_pool
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise ConfigError(f"cpu_pool.cores {sorted(cores)} include cores this process may not use "
                          f"(allowed: {sorted(allowed)})")
    try:
        layout = cpu_layout(cores, pool.workers, pool.threads_per_worker)
    except ValueError as exc:
        raise ConfigError(f"cpu_pool: {exc}") from None
    files = {model.key: _model_file(model, model.cpu_variant, _in_workers(settings))
             for model in models}
    if shard.count > len(layout):
        raise ConfigError(f"api_processes is {shard.count} but the cpu pool has {len(layout)} "
                          "workers; each API process needs at least one (lower api_processes)")
    return [WorkerSpec(index=i, cores=group, threads=pool.threads_per_worker, models=files,
                       spin_s=pool.spin_ms / 1000, ort_spinning=pool.ort_spinning)
            for i, group in enumerate(layout) if i % shard.count == shard.index]


def model_file(settings: Settings, model: LoadedModel, pool: PoolName) -> ModelFile:
    """What a worker of `pool` loads for this model version."""
    return _model_file(model, pool_variant(pool, settings, model.cpu_variant),
                       _in_workers(settings))


def _model_file(model: LoadedModel, variant: str, tokenizer: bool) -> ModelFile:
    manifest = model.manifest
    return ModelFile(str(model.files[variant]), tuple(manifest.model_inputs),
                     str(model.folder / manifest.tokenizer) if tokenizer else None,
                     manifest.max_length, manifest.pad_token_id, manifest.problem_type)


def route_for(model: LoadedModel, by_name: dict[str, Route]) -> Route:
    """A loaded version's route: its model's, under its version key (running the version's CPU
    variant where the route's pool is the CPU pool)."""
    route = by_name[model.served_name]
    variant = model.cpu_variant if route.pool == "cpu" else route.variant
    return dataclasses.replace(route, key=model.key, name=model.served_name, variant=variant)


def input_spec(model: LoadedModel) -> InputSpec:
    return InputSpec(tuple(model.manifest.model_inputs), model.manifest.pad_token_id)


def loaded_copy(model: LoadedModel, route: Route) -> Loaded:
    return Loaded(model, route, input_spec(model))


class Loader:
    """Reads the model repository, keeping or refusing broken artifacts as configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def failed(self, what: str, error: ArtifactError) -> str:
        """Stop (artifact_errors: fail) or log and return the reason, paths made relative."""
        if self.settings.artifact_errors == "fail":
            raise error
        reason = self.relative(str(error))
        log.error("artifact %s is unavailable: %s", what, reason)
        return reason

    def scan(self) -> dict[str, ModelEntry]:
        return scan_repository(self.settings.model_repository, self.settings.model_name)

    def relative(self, message: str) -> str:
        """Paths relative to the repository: error bodies never show the server's file system."""
        root = str(self.settings.model_repository.resolve())
        return message.replace(root + "/", "").replace(f"{self.settings.model_repository}/", "")

    def _stride(self) -> int | None:
        limits = self.settings.limits
        return limits.chunk_stride if limits.truncation == "chunk" else None

    def _variants(self, route: Route) -> list[str]:
        """Every variant the route's pools run, and cpu-int8 when a GPU pool that fails to
        start falls back to the CPU pool."""
        variants = [pool_variant(pool, self.settings) for pool in route.pools]
        if route.pools != ("cpu",) and self.settings.gpu_fallback == "cpu":
            variants.append(CPU_VARIANT)
        return list(dict.fromkeys(variants))

    def entries(self, registry: Registry) -> dict[str, ModelEntry]:
        """Every model name in the repository that can be read (the others are failed)."""
        found = {}
        for name, entry in self.scan().items():
            if entry.error is not None:
                registry.fail_model(name, self.failed(name, ArtifactError(entry.error)))
                continue
            found[name] = entry
        return found

    def load(self, entry: ModelEntry, version: int, route: Route) -> LoadedModel:
        """Read and check one version (raises ArtifactError); warn about what the checks
        found that does not stop it."""
        model = load_model_version(entry.folders[version], self._variants(route), self._stride(),
                                name=entry.name, version=version)
        model = self._on_golden_mismatch(model)
        for variant in slow_cpu_graphs(model.manifest, self._variants(route)):
            log.warning("model %s version %d: its %s graph runs ORT's SkipLayerNormalization, "
                        "a slow CPU kernel (built before CPU graphs split it): rebuilding the "
                        "artifact gives the same answers 1.3-1.8x faster", entry.name, version,
                        variant)
        for variant in self._variants(route):
            served = model.manifest.variants[variant]
            if served.batch_invariant is False:
                log.warning("model %s: %s is not batch-invariant (%s quantization): a text's "
                            "answer can change with what it is batched with; rebuild with "
                            "--int8 static", entry.name, variant, served.quantization)
        return model

    def _on_golden_mismatch(self, model: LoadedModel) -> LoadedModel:
        """Act on a failed golden check as `golden_mismatch` says: serve with a warning, serve
        fp32 on the CPU pool instead of cpu-int8, or refuse (ArtifactError)."""
        policy = self.settings.golden_mismatch
        what = f"model {model.served_name} version {model.version}"
        for result in [r for r in model.golden.values() if not r.matches]:
            reason = golden_mismatch_reason(result)
            if policy == "refuse":
                raise ArtifactError(f"{model.folder}: {reason} (golden_mismatch: refuse; "
                                    "golden_mismatch: fp32 serves the fp32 graph instead)")
            if policy == "fp32" and result.variant == model.cpu_variant == CPU_VARIANT:
                log.warning("%s: %s; serving its fp32 graph on the CPU pool instead "
                            "(golden_mismatch: fp32)", what, reason)
                model = serve_fp32_instead(model, reason)
                continue
            log.warning("%s: %s (golden_mismatch: %s)", what, reason, policy)
        return model

    def versions(self, registry: Registry, entries: dict[str, ModelEntry],
                 by_name: dict[str, Route]) -> None:
        """Load and check every version the policies select and commit each model's to the
        registry; failures are recorded there (or stop the server: artifact_errors: fail)."""
        for name, entry in entries.items():
            served = entry.served_versions()
            for version in entry.folders:
                if version not in served:
                    registry.set_state(name, version, "UNAVAILABLE", NOT_SELECTED)
            serving: dict[int, Loaded] = {}
            for version in served:
                try:
                    model = self.load(entry, version, by_name[name])
                except ArtifactError as exc:
                    what = name if len(served) == 1 else f"{name}:{version}"
                    registry.set_state(name, version, "UNAVAILABLE", self.failed(what, exc),
                                       failed=True)
                    continue
                serving[version] = loaded_copy(model, route_for(model, by_name))
                registry.add(serving[version])
            for problem in registry.commit(name, entry.config, serving):
                log.warning("model %s: %s", name, problem)
        if not registry.copies():
            raise ArtifactError("no artifact could be loaded: " + "; ".join(
                f"{name}: {why}" for name, why in registry.unavailable().items()))


def prepare_service(settings: Settings, shard: Shard | None = None) -> Service:
    """Everything that can fail without starting a process: read, verify, route, lay out.

    `shard`: this API process's share of the workers (default: the count from the settings, and
    this is the first; the tier's other processes pass their own)."""
    if shard is None:
        shard = Shard(0, api_process_count(settings))
    loader = Loader(settings)
    service = Service(settings=settings, registry=Registry(), specs={}, shard=shard,
                      tracing=tracing_from_settings(settings.tracing))
    service.registry.on_publish = service.publish
    entries = loader.entries(service.registry)
    names = sorted(entries)
    gpu_problem = gpu_unavailable_reason(settings) if wants_gpu(names, settings) else None
    loader.versions(service.registry, entries, plan_routes(names, settings, gpu_problem))
    service.specs = lay_out(settings, service.registry.copies(), shard)
    service.count_fallbacks()
    return service


class Pool(Runner, Protocol):
    """What the service needs of a pool beyond running batches (WorkerPool, or a test's fake)."""

    name: str
    restarts: int

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    def describe(self) -> list[dict[str, Any]]: ...

    async def load(self, key: str, model: ModelFile) -> None: ...

    async def unload(self, key: str) -> None: ...

    def stop(self) -> None: ...


PoolFactory = Callable[[str, list[WorkerSpec], Service], Pool]


def worker_pool(name: str, specs: list[WorkerSpec], service: Service) -> Pool:
    """The real pool: pinned worker processes."""
    return WorkerPool(name, specs, service.settings.worker_start_timeout_s,
                      on_restart=service.metrics.count_restart)


def _policy(batching: BatchPolicySettings, priorities: PrioritySettings, workers: int) \
        -> BatchPolicy:
    limits = priorities.max_queue_rows
    bulk_workers = priorities.lowest_max_workers or max(1, workers - 1)
    return BatchPolicy(max_batch_size=batching.max_batch_size,
                       max_batch_tokens=batching.max_batch_tokens,
                       max_wait_ms=batching.max_wait_ms, max_queue_rows=batching.max_queue_rows,
                       min_fill=batching.min_fill, levels=priorities.levels,
                       level_queue_rows=None if limits is None else tuple(limits),
                       promote_after_s=priorities.max_wait_ms / 1000,
                       lowest_max_batch_size=priorities.lowest_max_batch_size,
                       lowest_max_running=bulk_workers)


async def _start_pool(service: Service, name: PoolName, make_pool: PoolFactory) -> None:
    pool = make_pool(name, service.specs[name], service)
    await pool.start()
    service.pools[name] = pool


async def start_service(service: Service, make_pool: PoolFactory = worker_pool) -> None:
    """Start worker pools (the GPU pool first: if it cannot start, gpu_fallback decides), their
    batchers and the dispatcher; raises if a worker cannot load its models.
    `make_pool` builds each pool (tests pass one that runs no processes)."""
    settings = service.settings
    if "gpu" in service.specs:
        try:
            await _start_pool(service, "gpu", make_pool)
        except Exception as exc:
            if settings.gpu_fallback != "cpu":
                raise
            service.fall_back_to_cpu(f"its workers failed to start ({exc})")
    if "cpu" in service.specs:
        await _start_pool(service, "cpu", make_pool)
    policies = {name: _policy(settings.gpu_pool.batching if name == "gpu" else
                              settings.batching, settings.priorities, len(specs))
                for name, specs in service.specs.items()}
    registry = service.registry
    for name, pool in service.pools.items():
        routes = [route for route in registry.routes() if name in route.pools]
        batcher = Batcher(pool, policies[name], registry.inputs,
                          on_batch=functools.partial(service.observe_batch, name),
                          on_drop=functools.partial(service.metrics.count_dropped, name),
                          name=name)
        batcher.traced = service.tracing is not None
        batcher.start()
        service.batchers[name] = batcher
        service.metrics.start_series(name, sorted({route.name for route in routes}), {
            route.name: (name, route.spill_pool) for route in routes
            if route.spill_pool is not None and route.spill_pool != name})
        log.info("pool %s: %d workers serving %s", name, len(service.specs[name]),
                 sorted(route.key for route in routes))
    service.dispatcher = Dispatcher(registry.routes, service.batchers, service.pools,  # type: ignore[arg-type]
                                    settings.gpu_pool.spill_queue_rows,
                                    on_spill=service.metrics.count_spill)
    service.dispatcher.start()


async def stop_service(service: Service) -> None:
    if service.dispatcher is not None:
        await service.dispatcher.stop()
    for batcher in service.batchers.values():
        await batcher.stop()
    for pool in service.pools.values():
        pool.stop()
    if service.tracing is not None:
        service.tracing.shutdown()  # exports what is still buffered
