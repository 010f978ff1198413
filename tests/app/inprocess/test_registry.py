"""The registry: one record per model version, leases, the load plan, the index (in-process)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.core.batching import InputSpec
from app.core.errors import ModelUnavailable, UnknownModel, UnknownVersion
from app.core.registry import NOT_SELECTED, Loaded, Registry, plan_load, settle
from app.core.repository import LoadedModel, ModelConfig
from app.core.routing import CPU_VARIANT, Route
from contract.artifact import read_manifest
from tests.fakes import app_client


def _copy(name: str, version: int) -> Loaded:
    """A loaded copy whose model carries only what the registry reads (name, version, key)."""
    model = LoadedModel.__new__(LoadedModel)
    object.__setattr__(model, "name", name)
    object.__setattr__(model, "version", version)
    object.__setattr__(model, "generation", 0)
    object.__setattr__(model, "manifest", None)
    route = Route(f"{name}:{version}", "cpu", "cpu", CPU_VARIANT, name=name)
    return Loaded(model, route, InputSpec(("input_ids",), 0))


def _serving(registry: Registry, name: str, *versions: int) -> dict[int, Loaded]:
    copies = {v: _copy(name, v) for v in versions}
    for copy in copies.values():
        registry.add(copy)
    registry.commit(name, ModelConfig(), copies)
    return copies


# -- the load plan: a pure function --------------------------------------------------------------

def test_a_new_version_starts_and_the_one_it_replaces_retires() -> None:
    plan = plan_load(on_disk=[1, 2], selected=[2], serving=[1], changed=[], known=[1])
    assert (plan.start, plan.keep, plan.retire, plan.skip) == ((2,), (), (1,), ())


def test_an_unchanged_serving_version_is_kept() -> None:
    plan = plan_load(on_disk=[1], selected=[1], serving=[1], changed=[], known=[1])
    assert (plan.start, plan.keep, plan.retire) == ((), (1,), ())


def test_a_changed_version_starts_again() -> None:
    plan = plan_load(on_disk=[1], selected=[1], serving=[1], changed=[1], known=[1])
    assert (plan.start, plan.restart, plan.keep) == ((1,), (1,), ())


def test_versions_the_policy_does_not_select_are_skipped() -> None:
    plan = plan_load(on_disk=[1, 2, 3], selected=[3], serving=[], changed=[], known=[])
    assert plan.skip == (1, 2) and plan.start == (3,)


def test_a_version_gone_from_disk_retires_when_serving_and_is_forgotten_otherwise() -> None:
    plan = plan_load(on_disk=[3], selected=[3], serving=[1], changed=[], known=[1, 2, 3])
    assert plan.retire == (1,)
    assert plan.forget == (2,)


def test_a_version_that_failed_and_is_still_selected_is_tried_again() -> None:
    plan = plan_load(on_disk=[1, 2], selected=[2], serving=[1], changed=[], known=[1, 2])
    assert plan.start == (2,)


def test_a_version_skipped_at_start_up_and_now_selected_starts() -> None:
    plan = plan_load(on_disk=[1, 2], selected=[1, 2], serving=[2], changed=[], known=[1, 2])
    assert (plan.start, plan.keep) == ((1,), (2,))


def test_a_load_without_failures_retires_what_the_plan_retires() -> None:
    plan = plan_load(on_disk=[1, 2], selected=[2], serving=[1], changed=[], known=[1])
    assert settle(plan, started=[2], failed=[]) == ((2,), (1,))


def test_a_load_with_a_failure_keeps_everything_that_served() -> None:
    plan = plan_load(on_disk=[1, 2], selected=[2], serving=[1], changed=[], known=[1])
    assert settle(plan, started=[], failed=[2]) == ((1,), ())


def test_a_changed_version_that_fails_keeps_its_old_copy_serving() -> None:
    plan = plan_load(on_disk=[1], selected=[1], serving=[1], changed=[1], known=[1])
    assert settle(plan, started=[], failed=[1]) == ((1,), ())


# -- resolving and leasing -----------------------------------------------------------------------

def test_a_request_resolves_to_the_default_or_the_named_version() -> None:
    registry = Registry()
    copies = _serving(registry, "m", 1, 2)
    assert registry.find("m") is copies[2]
    assert registry.find("m", "1") is copies[1]


def test_unknown_names_and_versions_raise_typed_errors() -> None:
    registry = Registry()
    _serving(registry, "m", 1)
    with pytest.raises(UnknownModel, match="this server has: m"):
        registry.find("other")
    with pytest.raises(UnknownVersion, match="serves version"):
        registry.find("m", "7")


def test_a_model_whose_only_version_failed_is_unavailable_with_the_reason() -> None:
    registry = Registry()
    registry.set_state("m", 1, "UNAVAILABLE", "sha256 mismatch", failed=True)
    registry.commit("m", ModelConfig(), {})
    with pytest.raises(ModelUnavailable, match="failed to load \\(sha256 mismatch\\)"):
        registry.find("m")
    assert registry.unavailable() == {"m": "sha256 mismatch"}


def test_a_lease_holds_the_copy_until_released() -> None:
    registry = Registry()
    copy = _serving(registry, "m", 1)[1]
    with registry.lease("m") as held:
        assert held is copy and copy.leases == 1 and not copy.drained.is_set()
    assert copy.leases == 0 and copy.drained.is_set()


def test_a_lease_is_released_when_the_request_fails() -> None:
    registry = Registry()
    copy = _serving(registry, "m", 1)[1]
    with pytest.raises(RuntimeError), registry.lease("m"):
        raise RuntimeError("the batch failed")
    assert copy.leases == 0 and copy.drained.is_set()


def test_draining_waits_for_the_last_lease_without_polling() -> None:
    async def scenario() -> list[str]:
        registry = Registry()
        copy = _serving(registry, "m", 1)[1]
        events: list[str] = []
        lease = registry.lease("m")
        lease.__enter__()

        async def release() -> None:
            await asyncio.sleep(0.05)
            events.append("released")
            lease.__exit__(None, None, None)

        task = asyncio.create_task(release())
        await registry.drain(copy, timeout_s=5)
        events.append("drained")
        await task
        return events

    assert asyncio.run(scenario()) == ["released", "drained"]


def test_draining_gives_up_at_its_bound() -> None:
    async def scenario() -> int:
        registry = Registry()
        copy = _serving(registry, "m", 1)[1]
        registry.lease("m").__enter__()  # a request that never ends
        await registry.drain(copy, timeout_s=0.05)
        return copy.leases

    assert asyncio.run(scenario()) == 1


def test_a_commit_switches_what_answers_in_one_step() -> None:
    registry = Registry()
    old = _serving(registry, "m", 1)[1]
    new = _copy("m", 2)
    registry.add(new)
    assert registry.find("m") is old  # added, not yet serving
    registry.commit("m", ModelConfig(), {2: new})
    assert registry.find("m") is new
    assert registry.model("m").versions[1].loaded is None


# -- the index -----------------------------------------------------------------------------------

def test_the_index_lists_each_version_once_with_its_state() -> None:
    registry = Registry()
    registry.set_state("m", 1, "UNAVAILABLE", NOT_SELECTED)
    registry.set_state("m", 3, "UNAVAILABLE", "sha256 mismatch", failed=True)
    _serving(registry, "m", 2)
    rows = [(r.version, r.state, r.reason) for r in registry.index()]
    assert rows == [("1", "UNAVAILABLE", NOT_SELECTED), ("2", "READY", ""),
                    ("3", "UNAVAILABLE", "sha256 mismatch")]
    assert [r.version for r in registry.index(ready_only=True)] == ["2"]


def test_a_model_that_cannot_be_read_is_one_row_without_a_version() -> None:
    registry = Registry()
    registry.fail_model("m", "config.yaml: bad yaml")
    assert [(r.name, r.version, r.state) for r in registry.index()] == \
        [("m", "", "UNAVAILABLE")]


def _index(client_rows: list[dict[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["name"], r["version"]): (r["state"], r["reason"]) for r in client_rows}


@pytest.fixture
def repo(fast_repo: Path, tmp_path: Path) -> Path:
    """`sentiment/1`, served at start-up."""
    root = tmp_path / "models"
    shutil.copytree(fast_repo / "sst2", root / "sentiment" / "1")
    return root


def _add_broken(root: Path, source: Path, version: int) -> None:
    """A copy of `source` as `sentiment/<version>`, its model file missing."""
    folder = root / "sentiment" / str(version)
    shutil.copytree(source, folder)
    (folder / read_manifest(folder).variants["cpu-int8"].file).unlink()


def test_a_removed_failed_version_leaves_the_index(repo: Path, fast_repo: Path) -> None:
    async def scenario() -> list[Any]:
        async with app_client(repo) as (client, _, _):
            _add_broken(repo, fast_repo / "sst2", 2)
            refused = await client.post("/v2/repository/models/sentiment/load")
            before = _index((await client.post("/v2/repository/index")).json())
            shutil.rmtree(repo / "sentiment" / "2")
            loaded = await client.post("/v2/repository/models/sentiment/load")
            after = _index((await client.post("/v2/repository/index")).json())
            return [refused.status_code, before, loaded.status_code, after]

    refused, before, loaded, after = asyncio.run(scenario())
    assert refused == 400 and before[("sentiment", "2")][0] == "UNAVAILABLE"
    assert loaded == 200
    assert after == {("sentiment", "1"): ("READY", "")}


def test_a_fixed_version_replaces_its_failure_in_the_index(repo: Path, fast_repo: Path) -> None:
    async def scenario() -> dict[tuple[str, str], tuple[str, str]]:
        async with app_client(repo) as (client, _, _):
            _add_broken(repo, fast_repo / "sst2", 2)
            assert (await client.post("/v2/repository/models/sentiment/load")).status_code == 400
            shutil.rmtree(repo / "sentiment" / "2")
            shutil.copytree(fast_repo / "sst2", repo / "sentiment" / "2")
            assert (await client.post("/v2/repository/models/sentiment/load")).status_code == 200
            return _index((await client.post("/v2/repository/index")).json())

    assert asyncio.run(scenario()) == {("sentiment", "1"): ("UNAVAILABLE", NOT_SELECTED),
                                       ("sentiment", "2"): ("READY", "")}


def test_a_version_that_failed_at_start_up_shows_once(repo: Path, fast_repo: Path) -> None:
    _add_broken(repo, fast_repo / "sst2", 2)
    (repo / "sentiment" / "config.yaml").write_text("version_policy: {all: true}\n")

    async def scenario() -> list[dict[str, str]]:
        async with app_client(repo, artifact_errors="skip") as (client, _, _):
            return (await client.post("/v2/repository/index")).json()  # type: ignore[no-any-return]

    rows = asyncio.run(scenario())
    assert [(r["name"], r["version"], r["state"]) for r in rows] == \
        [("sentiment", "1", "READY"), ("sentiment", "2", "UNAVAILABLE")]
