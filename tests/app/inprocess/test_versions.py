"""Model names, versions, policies and canary weights, in-process (the app against a fake pool).

The same behaviours run through the real server and real workers in test_model_lifecycle.py."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.api.handle import query_version
from app.core.catalog import choose
from app.core.repository import ModelConfig, VersionPolicy, scan_repository
from app.settings import load_settings
from contract.artifact import ArtifactError, read_manifest, write_manifest
from tests.fakes import app_client


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def versioned(fast_repo: Path, tmp_path: Path) -> Path:
    """`sentiment/1` and `sentiment/2` (copies of one artifact) beside the flat `sst2`."""
    root = tmp_path / "models"
    shutil.copytree(fast_repo / "sst2", root / "sst2")
    for version in (1, 2):
        shutil.copytree(fast_repo / "sst2", root / "sentiment" / str(version))
    return root


def _config(root: Path, name: str, **config: Any) -> None:
    (root / name / "config.yaml").write_text(yaml.safe_dump(config))


def test_the_version_policy_selects_the_latest_n_the_listed_or_all() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(latest=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(specific=[1, 7]).select([3, 1, 2]) == [1]
    assert VersionPolicy(all=True).select([3, 1, 2]) == [1, 2, 3]


def test_a_policy_of_two_kinds_or_canary_weights_without_a_positive_sum_are_refused() -> None:
    with pytest.raises(ValueError, match="one of latest, specific or all"):
        VersionPolicy(latest=1, specific=[2])
    with pytest.raises(ValueError, match="positive sum"):
        ModelConfig(canary={1: 0.0, 2: 0.0})


def test_flat_and_versioned_layouts_share_one_repository(versioned: Path) -> None:
    entries = scan_repository(versioned)
    assert sorted(entries) == ["sentiment", "sst2"]
    assert sorted(entries["sentiment"].folders) == [1, 2]
    assert entries["sentiment"].served_versions() == [2]  # default policy: latest 1
    assert entries["sst2"].folders == {1: versioned / "sst2"}


def test_two_flat_artifacts_of_one_task_are_two_models_when_named_apart(
        fast_repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(fast_repo / "sst2", root / "a")
    shutil.copytree(fast_repo / "sst2", root / "b")
    assert "is in both" in (scan_repository(root)["sst2"].error or "")
    manifest = read_manifest(root / "b")
    write_manifest(root / "b", manifest.model_copy(update={"name": "sst2-deberta"}))
    entries = scan_repository(root)
    assert sorted(entries) == ["sst2", "sst2-deberta"]
    assert all(entry.error is None for entry in entries.values())


def test_an_unreadable_config_makes_its_model_unavailable_not_the_server(versioned: Path) -> None:
    (versioned / "sentiment" / "config.yaml").write_text("version_policy: {latest: 0}\n")
    entries = scan_repository(versioned)
    assert "config.yaml" in (entries["sentiment"].error or "")
    assert entries["sst2"].error is None


def test_an_empty_repository_says_how_to_build_a_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="compress build"):
        scan_repository(tmp_path)


def test_canary_weights_split_requests_between_versions() -> None:
    choice, problems = choose({1: "m:1", 2: "m:2"}, ModelConfig(canary={1: 3, 2: 1}))
    assert choice is not None and problems == []
    random.seed(0)
    picks = [choice.pick(None) for _ in range(4000)]
    assert abs(picks.count("m:2") / len(picks) - 0.25) < 0.03
    assert choice.pick("1") == "m:1" and choice.pick("7") is None


def test_a_default_or_canary_version_that_is_not_loaded_is_reported_and_left_out() -> None:
    choice, problems = choose({2: "m:2"}, ModelConfig(default_version=1, canary={1: 1, 2: 1}))
    assert choice is not None and choice.default == "m:2" and choice.pick(None) == "m:2"
    assert any("default_version 1" in p for p in problems)
    assert any("canary version(s) [1]" in p for p in problems)


def test_the_version_is_read_from_the_query_string() -> None:
    assert query_version(b"version=3") == "3"
    assert query_version(b"x=1&version=12") == "12"
    assert query_version(b"versions=1") is None


def test_answers_name_their_version_and_a_named_version_is_served(versioned: Path) -> None:
    _config(versioned, "sentiment", version_policy={"all": True}, default_version=1)

    async def scenario() -> list[httpx.Response]:
        async with app_client(versioned) as (client, _, _):
            body = {"inputs": ["a fine film"]}
            return [await client.post("/v1/classify/sentiment", json=body),
                    await client.post("/v1/classify/sentiment?version=2", json=body),
                    await client.post("/v2/models/sentiment/versions/2/infer", json={
                        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                    "data": ["a fine film"]}]}),
                    await client.post("/v1/classify/sentiment?version=9", json=body)]

    default, named, v2, missing = _run(scenario())
    assert default.json()["version"] == "1" and default.headers["x-model-version"] == "1"
    assert named.json()["version"] == "2" and named.headers["x-model-version"] == "2"
    assert v2.json()["model_version"] == "2"
    assert missing.status_code == 404 and "serves version(s) 1, 2" in missing.json()["error"]["message"]


def test_the_index_lists_every_version_with_its_state(versioned: Path) -> None:
    async def scenario() -> list[dict[str, str]]:
        async with app_client(versioned) as (client, _, _):
            return (await client.post("/v2/repository/index")).json()  # type: ignore[no-any-return]

    rows = {(r["name"], r["version"]): (r["state"], r["reason"]) for r in _run(scenario())}
    assert rows[("sentiment", "2")] == ("READY", "")
    assert rows[("sentiment", "1")] == ("UNAVAILABLE", "not selected by the version policy")
    assert rows[("sst2", "1")] == ("READY", "")


def test_a_load_switches_the_default_version_and_an_unload_stops_the_model(
        versioned: Path) -> None:
    async def scenario() -> list[Any]:
        async with app_client(versioned) as (client, pool, _):
            body = {"inputs": ["a fine film"]}
            before = (await client.post("/v1/classify/sentiment", json=body)).json()["version"]
            _config(versioned, "sentiment", version_policy={"specific": [1]})
            loaded = await client.post("/v2/repository/models/sentiment/load")
            after = (await client.post("/v1/classify/sentiment", json=body)).json()["version"]
            keys = sorted(pool.loaded)
            unloaded = await client.post("/v2/repository/models/sentiment/unload")
            gone = await client.post("/v1/classify/sentiment", json=body)
            return [before, loaded.status_code, after, keys, unloaded.status_code, gone]

    before, loaded, after, keys, unloaded, gone = _run(scenario())
    assert (before, loaded, after) == ("2", 200, "1")
    assert keys == ["sentiment:1~1"]  # loaded into the pool at run time, not at start
    assert unloaded == 200
    assert gone.status_code == 503 and "no version loaded" in gone.json()["error"]["message"]


def test_a_load_over_the_memory_budget_is_refused_and_the_old_version_serves(
        versioned: Path) -> None:
    async def scenario() -> tuple[httpx.Response, str]:
        async with app_client(versioned, repository={"memory_budget_mb": 1}) as (client, _, _):
            _config(versioned, "sentiment", version_policy={"specific": [1]})
            refused = await client.post("/v2/repository/models/sentiment/load")
            answer = await client.post("/v1/classify/sentiment", json={"inputs": ["fine"]})
            return refused, answer.json()["version"]

    refused, version = _run(scenario())
    assert refused.status_code == 400
    assert "over repository.memory_budget_mb (1)" in refused.json()["error"]
    assert version == "2"


def test_only_admin_keys_may_call_the_repository_when_they_are_set(versioned: Path) -> None:
    auth = {"api_keys": ["user"], "admin_api_keys": ["admin"]}

    async def scenario() -> list[int]:
        async with app_client(versioned, auth=auth) as (client, _, _):
            def key(k: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {k}"}

            return [(await client.post("/v2/repository/index", headers=key("user"))).status_code,
                    (await client.post("/v2/repository/index", headers=key("admin"))).status_code,
                    (await client.post("/v1/classify/sst2", json={"inputs": ["x"]},
                                       headers=key("user"))).status_code]

    assert _run(scenario()) == [401, 200, 200]


def test_settings_accept_a_memory_budget(versioned: Path) -> None:
    settings = load_settings(model_repository=versioned, repository={"memory_budget_mb": 512})
    assert settings.repository.memory_budget_mb == 512


def test_the_name_given_at_build_is_written_into_the_manifest(fast_repo: Path,
                                                              tmp_path: Path) -> None:
    from compress.__main__ import _named

    folder = tmp_path / "sst2"
    shutil.copytree(fast_repo / "sst2", folder)
    named = _named(read_manifest(folder), folder, "sst2-tiny")
    assert read_manifest(folder).served_name == named.served_name == "sst2-tiny"
    assert read_manifest(folder).task == "sst2"
    with pytest.raises(ValueError, match="pattern"):
        _named(read_manifest(folder), folder, "no/slashes")


def _break_version(root: Path, name: str, version: int, how: str) -> None:
    """A version whose model file is missing, or a graph ORT refuses (its digest recorded, so
    only ORT can tell)."""
    folder = root / name / str(version)
    manifest = read_manifest(folder)
    model = folder / manifest.variants["cpu-int8"].file
    if how == "missing":
        model.unlink()
        return
    model.write_bytes(b"not an onnx graph at all")
    from contract.artifact import sha256_file

    variants = dict(manifest.variants)
    variants["cpu-int8"] = variants["cpu-int8"].model_copy(
        update={"sha256": sha256_file(model)})
    write_manifest(folder, manifest.model_copy(update={"variants": variants}))


@pytest.mark.parametrize("how", ["missing", "refused by ORT"])
def test_a_version_that_cannot_load_leaves_the_old_one_serving_and_the_index_says_why(
        fast_repo: Path, versioned: Path, how: str) -> None:
    broken = versioned.parent / "broken"
    shutil.copytree(fast_repo / "sst2", broken / "sentiment" / "3")
    _break_version(broken, "sentiment", 3, how)

    async def scenario() -> tuple[httpx.Response, str, list[dict[str, str]]]:
        async with app_client(versioned) as (client, _, _):
            (broken / "sentiment" / "3").rename(versioned / "sentiment" / "3")
            refused = await client.post("/v2/repository/models/sentiment/load")
            answer = await client.post("/v1/classify/sentiment", json={"inputs": ["fine"]})
            index = (await client.post("/v2/repository/index")).json()
            return refused, answer.json()["version"], index

    refused, version, index = _run(scenario())
    assert refused.status_code == 400 and "version 3" in refused.json()["error"]
    assert version == "2"
    row = next(r for r in index if r["name"] == "sentiment" and r["version"] == "3")
    assert row["state"] == "UNAVAILABLE" and row["reason"]
    assert "/tmp" not in refused.json()["error"]


def test_one_artifact_folder_is_served_as_one_model_under_the_name_kserve_gives(
        fast_repo: Path) -> None:
    async def scenario() -> tuple[int, str]:
        async with app_client(fast_repo / "sst2", model_name="my-model") as (client, _, _):
            answer = await client.post("/v2/models/my-model/infer", json={"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]})
            return answer.status_code, answer.json()["model_name"]

    assert _run(scenario()) == (200, "my-model")


def test_the_command_line_takes_kserve_model_server_flags() -> None:
    from app.__main__ import _arguments

    assert _arguments(["--model_name=m", "--model_dir", "/mnt/models", "--http_port=8080"]) == \
        {"model_name": "m", "model_repository": "/mnt/models", "port": 8080}
    assert _arguments([]) == {}


def test_a_model_name_for_a_repository_of_several_models_is_refused(versioned: Path) -> None:
    with pytest.raises(ArtifactError, match="model_name"):
        scan_repository(versioned, single_name="one")


def test_a_model_name_takes_the_one_artifact_an_archive_unpacked_one_level_down(
        fast_repo: Path) -> None:
    entries = scan_repository(fast_repo, single_name="mine")  # fast_repo holds sst2/ only
    assert list(entries) == ["mine"] and entries["mine"].folders == {1: fast_repo / "sst2"}


@pytest.mark.parametrize("spinning", [True, False])
def test_ort_thread_spinning_is_set_on_the_session_when_configured(fast_repo: Path,
                                                                   spinning: bool) -> None:
    from contract.session import open_session

    manifest = read_manifest(fast_repo / "sst2")
    session = open_session(fast_repo / "sst2" / manifest.variants["cpu-int8"].file, 2,
                           spinning=spinning)
    entry = session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")
    assert entry == str(int(spinning))


def test_while_draining_every_answer_asks_the_client_to_close_its_connection(
        fast_repo: Path) -> None:
    async def scenario() -> list[str | None]:
        async with app_client(fast_repo) as (client, _, service):
            before = await client.post("/v1/classify/sst2", json={"inputs": ["fine"]})
            service.draining = True
            during = [await client.post("/v1/classify/sst2", json={"inputs": ["fine"]}),
                      await client.get("/v1/models")]
            return [before.headers.get("connection")] + \
                [r.headers.get("connection") for r in during]

    assert _run(scenario()) == [None, "close", "close"]
