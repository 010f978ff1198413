"""Repository events at run time: load a model (read the repository again for it: new or changed
versions start, versions the policy no longer selects stop) and unload it, without losing a
request.

A new version is read and checked (sha256, outputs, golden texts) off the event loop, then loaded
into every worker of its pools one worker at a time (the others keep serving), and only then do
requests resolve to it. A version that stops is first taken out of the catalog; it is unloaded
from the workers once the requests that resolved to it are answered. A load that fails leaves
what served before serving, and says why (the call's answer, the index, a metric).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

from app.core.batching import TaskInputs
from app.core.catalog import VersionState
from app.core.repository import CONFIG_NAME, ModelEntry, TaskModel
from app.core.routing import Route, plan_routes
from app.core.service import Loader, Service, model_file
from app.runtime.workers import WorkerError
from app.settings import ConfigError, PoolName
from contract.artifact import MANIFEST_NAME, ArtifactError, read_manifest

log = logging.getLogger(__name__)


# Resident bytes an ORT session adds to a worker per byte of its model file: 1.7 measured for a
# 4-layer INT8 student (docs/benchmarks.md, "Model lifecycle"), rounded up.
SESSION_PER_FILE_BYTE = 2


class LoadError(Exception):
    """A load or unload call that could not be done; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's shape)."""

    name: str
    version: str
    state: str
    reason: str


def repository_index(service: Service, ready_only: bool = False) -> list[IndexEntry]:
    """Every version the server knows of, with its state and the reason when not READY."""
    rows = [IndexEntry(name, str(version), state.state, state.reason)
            for name, versions in sorted(service.states.items())
            for version, state in sorted(versions.items())]
    rows += [IndexEntry(name, "", "UNAVAILABLE", why) for name, why in
             sorted(service.unavailable.items()) if name not in service.states]
    return [row for row in rows if not ready_only or row.state == "READY"]


class Repository:
    """Load and unload calls against one running service, one at a time."""

    def __init__(self, service: Service) -> None:
        self.service = service
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
                except LoadError as exc:
                    log.error("repository poll: model %s: %s", name, exc.message)
                except Exception:  # the poller must outlive one bad model
                    log.exception("repository poll: model %s", name)
            seen = now

    def _refuse_sharded(self) -> None:
        if self.service.shard.count > 1:
            raise LoadError(
                f"this server runs {self.service.shard.count} API processes and a load call "
                "reaches one of them; set repository.poll_s (each process then loads what "
                "changes in the repository) or api_processes: 1", 409)

    async def load(self, name: str) -> None:
        """Read the repository again for `name` and serve what its version policy selects."""
        self._refuse_sharded()
        await self._load(name)

    async def _load(self, name: str) -> None:
        async with self._lock:
            entries = await asyncio.to_thread(self.loader.scan)
            entry = entries.get(name)
            if entry is None:
                raise LoadError(f"the model repository has no model {name!r} (it has: "
                                f"{', '.join(sorted(entries))})", 404)
            if entry.error is not None:
                reason = self.loader.relative(entry.error)
                self._refused(name, None, reason)
                raise LoadError(reason)
            await self._apply(entry)

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name` (requests already accepted are answered)."""
        self._refuse_sharded()
        await self._unload(name)

    async def _unload(self, name: str) -> None:
        async with self._lock:
            service = self.service
            if name not in service.states:
                raise LoadError(f"no model {name!r} is loaded", 404)
            retiring = list(service.serving.pop(name, {}).items())
            service.publish(name)
            for version, key in retiring:
                service.states[name][version] = VersionState("UNLOADING")
                await self._stop(key)
                service.states[name][version] = VersionState("UNAVAILABLE", "unloaded")
            service.publish(name)
            log.info("model %s: unloaded", name)

    async def _apply(self, entry: ModelEntry) -> None:
        service, name = self.service, entry.name
        wanted = entry.served_versions()
        current = dict(service.serving.get(name, {}))
        states = service.states.setdefault(name, {})
        for version in entry.folders:
            if version not in wanted and version not in current:
                states[version] = VersionState("UNAVAILABLE", "not selected by the version policy")
        started, failures = await self._start_versions(entry, wanted, current)
        # A failed load keeps everything that served; a successful one retires what the policy
        # no longer selects and what was replaced.
        retire = {v: key for v, key in current.items()
                  if v in started or (not failures and v not in wanted)}
        service.configs[name] = entry.config
        serving = {v: key for v, key in current.items() if v not in retire} | started
        service.serving[name] = serving
        for version in started:
            states[version] = VersionState("READY")
        service.publish(name)  # from here requests resolve to the new versions
        await self._retire(entry, {v: k for v, k in retire.items() if v not in started},
                           [k for v, k in retire.items() if v in started])
        service.publish(name)
        service.unavailable.pop(name, None)
        if failures:
            raise LoadError(f"model {name!r}: " + "; ".join(failures) +
                            (f"; still serving version(s) {sorted(serving)}" if serving else ""))
        log.info("model %s: serving version(s) %s", name, sorted(serving))

    async def _start_versions(self, entry: ModelEntry, wanted: list[int],
                              current: dict[int, str]) -> tuple[dict[int, str], list[str]]:
        """Start the wanted versions that are new or changed: their keys, and what failed."""
        route = self._route(entry.name)
        states = self.service.states[entry.name]
        started: dict[int, str] = {}
        failures: list[str] = []
        for version in wanted:
            if version in current and not self._changed(current[version], entry, version):
                continue
            try:
                started[version] = await self._start(entry, version, route)
            except Exception as exc:  # e.g. a graph ORT refuses: its error is the reason
                reason = self.loader.relative(_reason(exc))
                failures.append(f"version {version}: {reason}")
                states[version] = VersionState("READY") if version in current else \
                    VersionState("UNAVAILABLE", reason)
                self._refused(entry.name, version, reason)
        return started, failures

    async def _retire(self, entry: ModelEntry, stopping: dict[int, str],
                      replaced: list[str]) -> None:
        """Unload versions that stop serving (their state says why) and the old copies of
        versions loaded again, once their requests are answered."""
        states = self.service.states[entry.name]
        for key in replaced:
            await self._stop(key)
        for version, key in stopping.items():
            states[version] = VersionState("UNLOADING")
            await self._stop(key)
            states[version] = VersionState(
                "UNAVAILABLE", "not selected by the version policy" if version in entry.folders
                else "removed from the repository")

    def _refused(self, name: str, version: int | None, reason: str) -> None:
        self.service.metrics.model_loads.labels(name, "failed").inc()
        log.error("model %s%s: load refused: %s", name,
                  "" if version is None else f" version {version}", reason)

    def _route(self, name: str) -> Route:
        """The name's route: the one it has, or a new one planned like at start-up."""
        for route in self.service.routes.values():
            if route.name == name:
                return route
        names = sorted(set(self.service.states) | {name})
        gpu_problem = None if "gpu" in self.service.pools else "no GPU pool is running"
        try:
            return plan_routes(names, self.service.settings, gpu_problem)[name]
        except ConfigError as exc:
            raise LoadError(str(exc)) from None

    def _changed(self, key: str, entry: ModelEntry, version: int) -> bool:
        """The version's files differ from what is loaded (compared by manifest digests)."""
        loaded = self.service.models[key]
        try:
            manifest = read_manifest(entry.folders[version])
        except ArtifactError:
            return True
        return loaded.folder != entry.folders[version] or \
            {n: v.sha256 for n, v in manifest.variants.items()} != \
            {n: v.sha256 for n, v in loaded.manifest.variants.items()}

    async def _start(self, entry: ModelEntry, version: int, route: Route) -> str:
        """Read, check and load one version into its pools; its key once every worker has it."""
        service = self.service
        service.states[entry.name][version] = VersionState("LOADING")
        model: TaskModel = await asyncio.to_thread(self.loader.load, entry, version, route)
        self._generation += 1
        model = dataclasses.replace(model, generation=self._generation)
        key = model.key
        missing = [pool for pool in route.pools if pool not in service.pools]
        if missing:
            raise LoadError(f"its route needs the {', '.join(missing)} pool, which this server "
                            "does not run; restart it to serve this model")
        self._check_memory(model, route)
        service.models[key] = model
        service.routes[key] = dataclasses.replace(route, task=key, name=entry.name)
        done: list[PoolName] = []
        try:
            for pool in route.pools:
                service.batchers[pool].tasks[key] = TaskInputs(
                    tuple(model.manifest.model_inputs), model.manifest.pad_token_id)
                await service.pools[pool].load(key, model_file(service.settings, model, pool))
                done.append(pool)
        except BaseException:
            for pool in route.pools:
                service.batchers[pool].tasks.pop(key, None)
            for pool in done:
                await service.pools[pool].unload(key)
            del service.models[key], service.routes[key]
            raise
        service.metrics.model_loads.labels(entry.name, "loaded").inc()
        log.info("model %s version %d: loaded as %s", entry.name, version, key)
        return key

    async def _stop(self, key: str) -> None:
        """Unload a version no request resolves to any more, once its requests are answered
        (at most the request deadline later)."""
        service = self.service
        until = time.monotonic() + service.settings.limits.request_timeout_s + 1.0
        while service.in_flight.get(key, 0) > 0 and time.monotonic() < until:
            await asyncio.sleep(0.01)
        route = service.routes.pop(key)
        for pool in route.pools:
            await service.pools[pool].unload(key)
            service.batchers[pool].take_waiting({key})  # rows of requests that timed out
            service.batchers[pool].tasks.pop(key, None)
        del service.models[key]
        service.in_flight.pop(key, None)

    def _check_memory(self, model: TaskModel, route: Route) -> None:
        """Refuse a load whose estimate would pass repository.memory_budget_mb."""
        budget = self.service.settings.repository.memory_budget_mb
        if budget is None:
            return
        resident = resident_bytes(self._pids())
        workers = sum(len(self.service.specs.get(pool, [])) for pool in route.pools)
        files = sum(path.stat().st_size for path in model.files.values())
        estimate = resident + SESSION_PER_FILE_BYTE * files * max(1, workers)
        if estimate > budget * 2**20:
            raise LoadError(
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
    if isinstance(exc, LoadError):
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
