"""Load and unload calls at run time, and the repository poller that makes them: a load reads the
repository again for one model (new or changed versions start, versions the policy no longer
selects or the disk no longer holds stop), an unload stops every version; no request is lost.

A new version is read and checked (sha256, outputs, golden texts) off the event loop, then loaded
into every worker of its pools one worker at a time (the others keep serving), and only then does
the registry's commit let requests resolve to it. A copy that stops serving is first left out of
the commit; its workers unload it once the requests that hold it are answered (its drained
event). A load that fails leaves what served serving, and says why (the call's error, the index,
a metric).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

from app.core.errors import Conflict, LoadRefused, UnknownModel
from app.core.registry import NOT_SELECTED, UNLOADED, Loaded, LoadPlan, plan_load, settle
from app.core.repository import CONFIG_NAME, LoadedModel, ModelEntry
from app.core.routing import Route, plan_routes
from app.core.service import Loader, Service, loaded_copy, model_file, route_for
from app.runtime.workers import WorkerError
from app.settings import ConfigError, PoolName
from contract.artifact import MANIFEST_NAME, ArtifactError, read_manifest

log = logging.getLogger(__name__)


# Resident bytes an ORT session adds to a worker per byte of its model file: 1.7 measured for a
# 4-layer INT8 student (docs/benchmarks-log.md, "Model lifecycle"), rounded up.
SESSION_PER_FILE_BYTE = 2


class ModelControl:
    """Load and unload calls against one running service, one at a time."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = service.registry
        self.loader = Loader(service.settings)
        self._lock = asyncio.Lock()
        self._generation = 0

    async def poll(self, interval_s: float) -> None:
        """Load what changed in the repository every `interval_s` (repository.poll_s): a model
        whose versions, manifests or config changed is loaded, one whose folder is gone is
        unloaded. Each API process polls for itself, so this also works with several."""
        seen = await asyncio.to_thread(fingerprints, self.loader)
        while True:
            await asyncio.sleep(interval_s)
            now = await asyncio.to_thread(fingerprints, self.loader)
            for name in sorted(set(now) | set(seen)):
                if now.get(name) == seen.get(name):
                    continue
                try:
                    await (self._load(name) if name in now else self._unload(name))
                except (LoadRefused, UnknownModel) as exc:
                    log.error("repository poll: model %s: %s", name, exc.message)
                except Exception:  # the poller must outlive one bad model
                    log.exception("repository poll: model %s", name)
            seen = now

    def _refuse_sharded(self) -> None:
        if self.service.shard.count > 1:
            raise Conflict(
                f"this server runs {self.service.shard.count} API processes and a load call "
                "reaches one of them; set repository.poll_s (each process then loads what "
                "changes in the repository) or api_processes: 1")

    async def load(self, name: str) -> None:
        """Read the repository again for `name` and serve what its version policy selects."""
        self._refuse_sharded()
        await self._load(name)

    async def _load(self, name: str) -> None:
        async with self._lock:
            entries = await asyncio.to_thread(self.loader.scan)
            entry = entries.get(name)
            if entry is None:
                raise UnknownModel(f"the model repository has no model {name!r} (it has: "
                                   f"{', '.join(sorted(entries))})")
            if entry.error is not None:
                reason = self.loader.relative(entry.error)
                self._refused(name, None, reason)
                if not self.registry.model(name).serving():
                    self.registry.fail_model(name, reason)
                raise LoadRefused(reason)
            await self._apply(entry)

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` (requests already accepted are answered)."""
        self._refuse_sharded()
        await self._unload(name)

    async def _unload(self, name: str) -> None:
        async with self._lock:
            registry = self.registry
            if not registry.knows(name):
                raise UnknownModel(f"no model {name!r} is loaded")
            model = registry.model(name)
            retiring = model.serving()
            registry.commit(name, model.config, {})
            for number, loaded in retiring.items():
                registry.set_state(name, number, "UNLOADING")
                await self._stop(loaded)
                registry.set_state(name, number, "UNAVAILABLE", UNLOADED)
            log.info("model %s: unloaded", name)

    async def _apply(self, entry: ModelEntry) -> None:
        """Start what the plan starts, commit, then retire what stops serving."""
        registry, name = self.registry, entry.name
        model = registry.model(name)
        before = model.serving()
        changed = [v for v, loaded in before.items() if self._changed(loaded, entry, v)]
        plan = plan_load(entry.folders, entry.served_versions(), before, changed, model.versions)
        registry.forget(name, plan.forget)
        for number in plan.skip:
            registry.set_state(name, number, "UNAVAILABLE", NOT_SELECTED)
        started, failures = await self._start_versions(entry, plan)
        serving_numbers, stopping = settle(plan, started, failures)
        serving = {v: started.get(v) or before[v] for v in serving_numbers}
        for problem in registry.commit(name, entry.config, serving):  # requests switch here
            log.warning("model %s: %s", name, problem)
        for number in plan.restart:
            if number in started:  # the old copy of a version loaded again
                await self._stop(before[number])
        for number in stopping:
            registry.set_state(name, number, "UNLOADING")
            await self._stop(before[number])
            if number in entry.folders:
                registry.set_state(name, number, "UNAVAILABLE", NOT_SELECTED)
            else:
                registry.forget(name, [number])
        if failures:
            raise LoadRefused(f"model {name!r}: " + "; ".join(failures.values()) + (
                f"; still serving version(s) {sorted(serving)}" if serving else ""))
        log.info("model %s: serving version(s) %s", name, sorted(serving))

    async def _start_versions(self, entry: ModelEntry, plan: LoadPlan) \
            -> tuple[dict[int, Loaded], dict[int, str]]:
        """Start the plan's versions: their loaded copies, and why the others failed."""
        route = self._route(entry.name)
        started: dict[int, Loaded] = {}
        failures: dict[int, str] = {}
        for version in plan.start:
            try:
                started[version] = await self._start(entry, version, route)
            except Exception as exc:  # e.g. a graph ORT refuses: its error is the reason
                reason = self.loader.relative(_reason(exc))
                failures[version] = f"version {version}: {reason}"
                if version in plan.restart:  # the old copy still serves
                    self.registry.set_state(entry.name, version, "READY")
                else:
                    self.registry.set_state(entry.name, version, "UNAVAILABLE", reason,
                                            failed=True)
                self._refused(entry.name, version, reason)
        return started, failures

    def _refused(self, name: str, version: int | None, reason: str) -> None:
        self.service.metrics.model_loads.labels(name, "failed").inc()
        log.error("model %s%s: load refused: %s", name,
                  "" if version is None else f" version {version}", reason)

    def _route(self, name: str) -> Route:
        """The name's route: the one its loaded copies have, or a new one planned like at
        start-up."""
        for route in self.registry.routes():
            if route.name == name:
                return route
        names = sorted(set(self.registry.models) | {name})
        gpu_problem = None if "gpu" in self.service.pools else "no GPU pool is running"
        try:
            return plan_routes(names, self.service.settings, gpu_problem)[name]
        except ConfigError as exc:
            raise LoadRefused(str(exc)) from None

    def _changed(self, loaded: Loaded, entry: ModelEntry, version: int) -> bool:
        """The version's files differ from what is loaded (compared by manifest digests)."""
        try:
            manifest = read_manifest(entry.folders[version])
        except (ArtifactError, KeyError):
            return True
        return loaded.model.folder != entry.folders[version] or \
            {n: v.sha256 for n, v in manifest.variants.items()} != \
            {n: v.sha256 for n, v in loaded.model.manifest.variants.items()}

    async def _start(self, entry: ModelEntry, version: int, route: Route) -> Loaded:
        """Read, check and load one version into its pools; its copy once every worker has it
        (registered, not yet serving)."""
        service = self.service
        self.registry.set_state(entry.name, version, "LOADING")
        model: LoadedModel = await asyncio.to_thread(self.loader.load, entry, version, route)
        self._generation += 1
        model = dataclasses.replace(model, generation=self._generation)
        missing = [pool for pool in route.pools if pool not in service.pools]
        if missing:
            raise LoadRefused(f"its route needs the {', '.join(missing)} pool, which this "
                              "server does not run; restart it to serve this model")
        self._check_memory(model, route)
        loaded = loaded_copy(model, route_for(model, {entry.name: route}))
        self.registry.add(loaded)
        done: list[PoolName] = []
        try:
            for pool in route.pools:
                await service.pools[pool].load(loaded.key, model_file(service.settings, model,
                                                                      pool))
                done.append(pool)
        except BaseException:
            for pool in done:
                await service.pools[pool].unload(loaded.key)
            self.registry.remove(loaded)
            raise
        service.metrics.model_loads.labels(entry.name, "loaded").inc()
        log.info("model %s version %d: loaded as %s", entry.name, version, loaded.key)
        return loaded

    async def _stop(self, loaded: Loaded) -> None:
        """Unload a copy no request resolves to any more, once the requests holding it are
        answered (at most the request deadline later)."""
        service = self.service
        await self.registry.drain(loaded, service.settings.limits.request_timeout_s + 1.0)
        for pool in loaded.route.pools:
            await service.pools[pool].unload(loaded.key)
            service.batchers[pool].take_waiting({loaded.key})  # rows of requests that timed out
        self.registry.remove(loaded)

    def _check_memory(self, model: LoadedModel, route: Route) -> None:
        """Refuse a load whose estimate would pass repository.memory_budget_mb."""
        budget = self.service.settings.repository.memory_budget_mb
        if budget is None:
            return
        resident = resident_bytes(self._pids())
        workers = sum(len(self.service.specs.get(pool, [])) for pool in route.pools)
        files = sum(path.stat().st_size for path in model.files.values())
        estimate = resident + SESSION_PER_FILE_BYTE * files * max(1, workers)
        if estimate > budget * 2**20:
            raise LoadRefused(
                f"loading it needs about {estimate / 2**20:.0f} MiB (resident now "
                f"{resident / 2**20:.0f} MiB + {SESSION_PER_FILE_BYTE} x {files / 2**20:.1f} MiB "
                f"of model files x {workers} workers), over repository.memory_budget_mb "
                f"({budget}); unload a version first or raise the budget")

    def _pids(self) -> list[int]:
        pids = [os.getpid()]
        for running in self.service.pools.values():
            pids += [w["pid"] for w in running.describe() if w.get("pid")]
        return pids


def _reason(exc: Exception) -> str:
    if isinstance(exc, LoadRefused):
        return exc.message
    if isinstance(exc, ArtifactError | WorkerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def fingerprints(loader: Loader) -> dict[str, tuple[tuple[str, int, int], ...]]:
    """Per model name, what a change shows in: each version folder's manifest and the config
    (path, size, modification time). A build writes a new artifact aside and moves it in whole,
    so its manifest is new; an edited config.yaml changes its own."""
    root = loader.settings.model_repository
    try:
        entries = loader.scan()
    except ArtifactError:
        return {}
    found = {}
    for name, entry in entries.items():
        paths = [folder / MANIFEST_NAME for folder in entry.folders.values()]
        parent = next(iter(entry.folders.values())).parent
        if parent != root:  # versioned layout: <name>/config.yaml
            paths.append(parent / CONFIG_NAME)
        stamps = []
        for path in sorted(paths):
            try:
                stat = path.stat()
            except OSError:
                continue
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        found[name] = tuple(stamps)
    return found


def resident_bytes(pids: list[int]) -> int:
    """Resident memory of these processes, from /proc (0 for one that is gone)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total
