"""The one owner of models and their versions (Triton's model life cycle is the reference).

    name -> Model (config, choice of who answers, why it cannot be read)
         -> Version (number, state, reason, and the Loaded copy requests resolve to)
    key  -> Loaded (one loaded copy: model files, route, input spec, leases)

A request resolves a name (and maybe a version) to a Loaded copy and holds a Lease on it while
its rows run; a copy that stops serving is unloaded once its lease count is back at zero (its
`drained` event), never by polling. Which versions start, stay and stop when the repository
changes is decided by `plan_load`, a pure function; `commit` then switches what answers in one
step. Batchers and the dispatcher ask the registry for a key's route and input spec.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from app.core.batching import InputSpec
from app.core.catalog import Choice, choose
from app.core.errors import ModelUnavailable, UnknownModel, UnknownVersion
from app.core.repository import LoadedModel, ModelConfig
from app.core.routing import Route

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
NOT_SELECTED = "not selected by the version policy"
UNLOADED = "unloaded"


@dataclass(eq=False)  # compared by identity: two copies of one version are two things
class Loaded:
    """One loaded copy of a model version: what requests lease and workers run."""

    model: LoadedModel
    route: Route
    inputs: InputSpec
    leases: int = 0
    # Set while no request holds a lease: retiring the copy waits on it.
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.drained.set()

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def name(self) -> str:
        return self.model.served_name

    @property
    def version(self) -> int:
        return self.model.version


class Lease:
    """A request's hold on a loaded copy: `with registry.lease(name, version) as loaded:`."""

    __slots__ = ("loaded",)

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def __enter__(self) -> Loaded:
        loaded = self.loaded
        loaded.leases += 1
        if loaded.leases == 1:
            loaded.drained.clear()
        return loaded

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        loaded = self.loaded
        loaded.leases -= 1
        if loaded.leases == 0:
            loaded.drained.set()


@dataclass
class Version:
    """One version of a model as the repository index shows it."""

    number: int
    state: State
    reason: str = ""
    loaded: Loaded | None = None  # the copy requests resolve to, while READY
    failed: bool = False  # UNAVAILABLE because its artifact failed its checks


@dataclass
class Model:
    """One model name: its config, its versions, and who answers a request for it."""

    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[int, Version] = field(default_factory=dict)
    choice: Choice[Loaded] | None = None
    error: str | None = None  # the model's folder or config could not be read

    def serving(self) -> dict[int, Loaded]:
        """The versions requests may resolve to, by number."""
        return {number: version.loaded for number, version in sorted(self.versions.items())
                if version.loaded is not None}

    def failures(self) -> dict[int, str]:
        return {number: version.reason for number, version in sorted(self.versions.items())
                if version.failed}


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's shape)."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class LoadPlan:
    """What a load does to one model's versions, decided from what is on disk and served."""

    start: tuple[int, ...]  # selected, and new or changed on disk: read, check, load
    restart: tuple[int, ...]  # the changed ones among `start` (their old copy serves meanwhile)
    keep: tuple[int, ...]  # serving and still selected, unchanged
    retire: tuple[int, ...]  # serving but no longer selected or no longer on disk
    skip: tuple[int, ...]  # on disk, not selected, not serving: UNAVAILABLE, not selected
    forget: tuple[int, ...]  # known, gone from disk, not serving: leave the index


def plan_load(on_disk: Iterable[int], selected: Iterable[int], serving: Iterable[int],
              changed: Iterable[int], known: Iterable[int]) -> LoadPlan:
    """Which versions start, stay, stop, are skipped or forgotten. `changed`: serving versions
    whose files differ from what is loaded; `known`: every version the index lists now."""
    disk, now = set(on_disk), set(serving)
    wanted = set(selected) & disk
    restart = set(changed) & now & wanted
    return LoadPlan(
        start=tuple(sorted((wanted - now) | restart)),
        restart=tuple(sorted(restart)),
        keep=tuple(sorted((now & wanted) - restart)),
        retire=tuple(sorted(now - wanted)),
        skip=tuple(sorted(disk - wanted - now)),
        forget=tuple(sorted(set(known) - disk - now)),
    )


def settle(plan: LoadPlan, started: Iterable[int], failed: Iterable[int]) \
        -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(versions that serve after the load, versions that stop serving). A load with a failure
    keeps everything that served (a changed version that failed keeps its old copy); one
    without retires what the plan retires."""
    done, broken = set(started), set(failed)
    serving = set(plan.keep) | done | (broken & set(plan.restart))
    if broken:
        return tuple(sorted(serving | set(plan.retire))), ()
    return tuple(sorted(serving)), plan.retire


PublishHook = Callable[[Model], None]


class Registry:
    """Models by name and loaded copies by key; the only place either is changed."""

    def __init__(self, on_publish: PublishHook | None = None) -> None:
        self.models: dict[str, Model] = {}
        self._loaded: dict[str, Loaded] = {}  # every copy workers hold, serving or retiring
        self.on_publish = on_publish  # the service's metrics follow each switch

    # -- the hot path ------------------------------------------------------------------------

    def find(self, name: str, version: str | None = None) -> Loaded:
        """The copy that answers a request for `name` (the version named, else the default or a
        canary draw); raises UnknownModel, UnknownVersion or ModelUnavailable."""
        model = self.models.get(name)
        choice = None if model is None else model.choice
        if choice is None:
            raise self._why_none(name, model)
        loaded = choice.pick(version)
        if loaded is None:
            raise UnknownVersion(f"model {name!r} has no version {version!r} loaded; it serves "
                                 f"version(s) {', '.join(choice.keys)}")
        return loaded

    def lease(self, name: str, version: str | None = None) -> Lease:
        """`find`, held: the copy is not unloaded before the lease is released."""
        return Lease(self.find(name, version))

    def _why_none(self, name: str, model: Model | None) -> Exception:
        if model is not None and (model.error or model.failures()):
            reason = model.error or "; ".join(model.failures().values())
            return ModelUnavailable(f"model {name!r} is unavailable: its artifact failed to "
                                    f"load ({reason})")
        if model is not None and model.versions:
            return ModelUnavailable(f"model {name!r} has no version loaded; load one with POST "
                                    f"/v2/repository/models/{name}/load")
        return UnknownModel(f"unknown model {name!r}; this server has: "
                            f"{', '.join(self.serving_names())}")

    def inputs(self, key: str) -> InputSpec:
        """How to build feeds for the copy's graph (the batchers ask)."""
        return self._loaded[key].inputs

    def route(self, key: str) -> Route:
        return self._loaded[key].route

    def copies(self) -> list[Loaded]:
        """Every loaded copy, serving or retiring."""
        return list(self._loaded.values())

    def routes(self) -> list[Route]:
        return [loaded.route for loaded in self._loaded.values()]

    def default_route(self, name: str) -> Route | None:
        """The route a request naming no version takes (every version of a model takes the
        same), or None when the model serves nothing."""
        model = self.models.get(name)
        return None if model is None or model.choice is None else model.choice.default.route

    def serving_names(self) -> list[str]:
        return sorted(name for name, model in self.models.items() if model.choice is not None)

    def knows(self, name: str) -> bool:
        return name in self.models

    def serving(self) -> list[Loaded]:
        """Every copy requests may resolve to, by key."""
        return sorted((loaded for model in self.models.values()
                       for loaded in model.serving().values()), key=lambda c: c.key)

    # -- the life cycle ----------------------------------------------------------------------

    def model(self, name: str) -> Model:
        """The model's record, made empty when the name is new."""
        return self.models.setdefault(name, Model(name))

    def add(self, loaded: Loaded) -> None:
        """A copy the workers are about to hold (no request resolves to it before `commit`)."""
        self._loaded[loaded.key] = loaded

    def set_state(self, name: str, number: int, state: State, reason: str = "",
                  failed: bool = False) -> None:
        versions = self.model(name).versions
        current = versions.get(number)
        loaded = None if current is None or state == "UNAVAILABLE" else current.loaded
        versions[number] = Version(number, state, reason, loaded, failed)

    def fail_model(self, name: str, reason: str) -> None:
        """The model's folder or config cannot be read."""
        self.model(name).error = reason
        self._publish(self.models[name])

    def forget(self, name: str, numbers: Iterable[int]) -> None:
        """Versions gone from disk leave the index."""
        model = self.model(name)
        for number in numbers:
            model.versions.pop(number, None)

    def commit(self, name: str, config: ModelConfig, serving: dict[int, Loaded]) -> list[str]:
        """Switch what answers requests for `name`, in one step: exactly `serving`. Returns
        what the config asked for that could not be honoured."""
        model = self.model(name)
        model.config = config
        model.error = None
        for number, version in model.versions.items():
            if number not in serving and version.loaded is not None:
                version.loaded = None
        for number, loaded in serving.items():
            model.versions[number] = Version(number, "READY", "", loaded)
        choice, problems = choose(serving, config)
        model.choice = choice
        self._publish(model)
        return problems

    async def drain(self, loaded: Loaded, timeout_s: float) -> None:
        """Wait until no request holds the copy (at most `timeout_s`: a request past its
        deadline has been answered with an error by then)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loaded.drained.wait(), timeout_s)

    def remove(self, loaded: Loaded) -> None:
        """The workers no longer hold the copy."""
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]

    def reroute(self, route_of: Callable[[Loaded], Route]) -> None:
        """Give every copy a new route (the GPU pool fell back to the CPU pool)."""
        for loaded in self._loaded.values():
            loaded.route = route_of(loaded)

    def _publish(self, model: Model) -> None:
        if self.on_publish is not None:
            self.on_publish(model)

    # -- what clients see of it ----------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every version the repository holds, with its state and the reason when not READY;
        a model whose folder cannot be read is one row without a version."""
        rows = []
        for name, model in sorted(self.models.items()):
            if model.error is not None and not model.versions:
                rows.append(IndexEntry(name, "", "UNAVAILABLE", model.error))
            rows += [IndexEntry(name, str(number), version.state, version.reason)
                     for number, version in sorted(model.versions.items())]
        return [row for row in rows if not ready_only or row.state == "READY"]

    def unavailable(self) -> dict[str, str]:
        """What failed its checks, and why: a model by name when it serves nothing, else each
        failed version by key."""
        found = {}
        for name, model in sorted(self.models.items()):
            if model.error is not None:
                found[name] = model.error
            failures = model.failures()
            if model.choice is None and failures:
                found[name] = "; ".join(failures.values())
            elif failures:
                found |= {f"{name}:{number}": why for number, why in failures.items()}
        return found
