"""Versions loaded, swapped, refused and unloaded at run time, and SIGTERM under keep-alive
clients: through the real server, real worker processes and closed-loop load (bench/lifecycle.py,
shorter). Each test loads its own model name, so the tests do not depend on each other's order."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from app.runtime.workers import ModelFile, WorkerError, WorkerPool, WorkerSpec
from bench import lifecycle
from contract.artifact import read_manifest
from tests.conftest import RunningServer, TinyRepo, free_port, start_server, stop_server
from tests.metrics_text import sample

CLIENTS = 16


@pytest.fixture(scope="module")
def repo(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flat sst2 and rte artifacts, and `sentiment/1`: a second model of task sst2."""
    root = tmp_path_factory.mktemp("lifecycle") / "models"
    shutil.copytree(tiny_repo.root, root)
    lifecycle.versioned_repository(tiny_repo.root / "sst2", root, "sentiment", 1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("lifecycle-server") / "server.log"
    running = start_server(repo, log, FFS_CPU_POOL__WORKERS="2")
    yield running
    stop_server(running)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        yield client


def _add_model(repo: Path, source: Path, name: str, *versions: int) -> None:
    (repo / name).mkdir()
    for version in versions:
        shutil.copytree(source, repo / name / str(version))


def _index(http: httpx.Client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["name"], r["version"]): (r["state"], r["reason"])
            for r in http.post("/v2/repository/index").json()}


def test_two_models_of_one_task_are_served_side_by_side(http: httpx.Client) -> None:
    cards = {(m["name"], m["version"]): m["task"] for m in http.get("/v1/models").json()["models"]}
    assert cards[("sst2", "1")] == cards[("sentiment", "1")] == "sst2"
    for name in ("sst2", "sentiment"):
        answer = http.post(f"/v1/classify/{name}", json={"inputs": ["a fine film"]})
        assert answer.status_code == 200 and answer.json()["version"] == "1"


def test_versions_swap_under_load_with_no_failed_or_lost_request(
        server: RunningServer, repo: Path, tiny_repo: TinyRepo, http: httpx.Client) -> None:
    source = tiny_repo.root / "sst2"
    _add_model(repo, source, "swap", 1)
    assert http.post("/v2/repository/models/swap/load").status_code == 200

    def add(version: int) -> None:
        shutil.copytree(source, repo / "swap" / str(version))

    phases = [
        asyncio.run(lifecycle.swap(server.url, "swap", CLIENTS, "1", "2", lambda: add(2))),
        asyncio.run(lifecycle.swap(server.url, "swap", CLIENTS, "2", "3", lambda: add(3))),
        asyncio.run(lifecycle.swap(server.url, "swap", CLIENTS, "3", "2", lambda: lifecycle
                                   .write_policy(repo, "swap", {"specific": [2]}))),
    ]
    for phase, (old, new) in zip(phases, [("1", "2"), ("2", "3"), ("3", "2")], strict=True):
        assert phase.call.startswith("200"), phase
        assert phase.counts["non_2xx"] == phase.counts["lost"] == phase.counts["refused"] == 0
        assert set(phase.versions) <= {old, new} and new in phase.versions, phase
        assert phase.old_after_s is None or phase.old_after_s < 2.0, phase
    index = _index(http)
    assert index[("swap", "2")] == ("READY", "")
    assert index[("swap", "3")][0] == "UNAVAILABLE"


def test_a_failed_load_keeps_the_old_version_serving_and_says_why(
        server: RunningServer, repo: Path, tiny_repo: TinyRepo, http: httpx.Client) -> None:
    source = tiny_repo.root / "sst2"
    _add_model(repo, source, "broken", 1)
    assert http.post("/v2/repository/models/broken/load").status_code == 200
    failed_before = sample(http, "ffs_model_loads_total", task="broken", outcome="failed")

    def flipped() -> None:
        shutil.copytree(source, repo / "broken" / "2")
        lifecycle.flip_a_byte(repo / "broken" / "2")

    phase = asyncio.run(lifecycle.failed_load(server.url, "broken", CLIENTS, flipped))
    assert phase.call.startswith("400") and "sha256 mismatch" in phase.call
    assert str(repo) not in phase.call  # paths relative to the repository
    assert phase.counts["non_2xx"] == phase.counts["lost"] == 0
    assert phase.versions == ["1"]
    state, reason = _index(http)[("broken", "2")]
    assert state == "UNAVAILABLE" and "sha256 mismatch" in reason
    assert sample(http, "ffs_model_loads_total", task="broken", outcome="failed") == \
        failed_before + 1


def test_an_unloaded_model_answers_503_until_it_is_loaded_again(
        repo: Path, tiny_repo: TinyRepo, http: httpx.Client) -> None:
    _add_model(repo, tiny_repo.root / "sst2", "gone", 1)
    assert http.post("/v2/repository/models/gone/load").status_code == 200
    assert http.post("/v2/repository/models/gone/unload").status_code == 200
    refused = http.post("/v1/classify/gone", json={"inputs": ["fine"]})
    assert refused.status_code == 503
    assert _index(http)[("gone", "1")] == ("UNAVAILABLE", "unloaded")
    assert sample(http, "ffs_model_version_ready", task="gone", version="1") == 0
    assert http.post("/v2/repository/models/gone/load").status_code == 200
    assert http.post("/v1/classify/gone", json={"inputs": ["fine"]}).status_code == 200


def test_canary_weights_split_traffic_per_request_and_per_version_metrics_count_it(
        repo: Path, tiny_repo: TinyRepo, http: httpx.Client) -> None:
    _add_model(repo, tiny_repo.root / "sst2", "canary", 1, 2)
    (repo / "canary" / "config.yaml").write_text(
        "version_policy: {latest: 2}\ncanary: {1: 3, 2: 1}\n")
    assert http.post("/v2/repository/models/canary/load").status_code == 200
    versions = [http.post("/v1/classify/canary", json={"inputs": ["fine"]}).json()["version"]
                for _ in range(400)]
    share = versions.count("2") / len(versions)
    assert abs(share - 0.25) < 0.07  # 3 sigma of a binomial share over 400 draws: 0.065
    assert sample(http, "ffs_requests_total", task="canary", version="2", status="200") == \
        versions.count("2")
    cards = {m["version"]: m for m in http.get("/v1/models").json()["models"]
             if m["name"] == "canary"}
    assert cards["2"]["canary_weight"] == 0.25


def test_a_restarted_worker_comes_back_with_the_versions_loaded_since_start(
        repo: Path, tiny_repo: TinyRepo, http: httpx.Client) -> None:
    _add_model(repo, tiny_repo.root / "sst2", "restart", 1)
    assert http.post("/v2/repository/models/restart/load").status_code == 200
    pids = [w["pid"] for w in http.get("/v1/pools").json()["pools"][0]["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = http.get("/v1/pools").json()["pools"][0]["workers"]
        if all(w["alive"] and w["pid"] not in pids for w in workers):
            break
        time.sleep(0.1)
    answers = [http.post("/v1/classify/restart", json={"inputs": ["fine"]}) for _ in range(8)]
    assert [a.status_code for a in answers] == [200] * 8


def test_tritonclient_lists_loads_and_unloads_models(
        server: RunningServer, repo: Path, tiny_repo: TinyRepo) -> None:
    _add_model(repo, tiny_repo.root / "sst2", "triton", 1)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        client.load_model("triton")
        assert client.is_model_ready("triton")
        index = {(m["name"], m.get("version")): m["state"]
                 for m in client.get_model_repository_index()}
        assert index[("triton", "1")] == "READY"
        client.unload_model("triton")
        assert not client.is_model_ready("triton")
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope")
    finally:
        client.close()


def test_a_soak_of_swaps_loses_no_request_and_every_load_succeeds(tiny_repo: TinyRepo) -> None:
    counts, points, failures = lifecycle.swap_soak(tiny_repo.root / "sst2", clients=4, swaps=5,
                                                   workers=1)
    assert failures == []
    assert counts["requests"] > 0 and counts["non_2xx"] == counts["lost"] == 0
    assert [p.swaps for p in points] == [1, 5]
    assert all(p.workers_mib > 0 and p.api_mib > 0 for p in points)


def _sigterm_phase(tiny_repo: TinyRepo, tmp_path: Path, over_grpc: bool) \
        -> tuple[int | None, lifecycle.Phase]:
    """SIGTERM a fresh server under CLIENTS closed-loop clients: its exit status and the
    phase's counts."""
    grpc_port = free_port()
    running = start_server(tiny_repo.root, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="2",
                           FFS_DRAIN_DELAY_S="1.0", FFS_GRPC_PORT=str(grpc_port))
    try:
        scenario = lifecycle.sigterm_grpc(running.process, f"127.0.0.1:{grpc_port}", "sst2",
                                          CLIENTS, after_s=0.5) if over_grpc else \
            lifecycle.sigterm(running.process, running.url, "/v1/classify/sst2", CLIENTS,
                              after_s=0.5)
        phase = asyncio.run(scenario)
    finally:
        if running.process.poll() is None:
            stop_server(running)
    return running.process.returncode, phase


@pytest.mark.parametrize("over_grpc", [False, True], ids=["http", "grpc"])
def test_sigterm_under_keep_alive_clients_loses_no_request(tiny_repo: TinyRepo, tmp_path: Path,
                                                          over_grpc: bool) -> None:
    status, phase = _sigterm_phase(tiny_repo, tmp_path, over_grpc)
    assert status == 0
    assert phase.counts["requests"] > 0
    assert phase.counts["lost"] == 0 and phase.counts["non_2xx"] == 0, phase


def test_poll_mode_loads_a_version_added_to_the_repository(tiny_repo: TinyRepo,
                                                           tmp_path: Path) -> None:
    polled = tmp_path / "models"
    lifecycle.versioned_repository(tiny_repo.root / "sst2", polled, "polled", 1)
    running = start_server(polled, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="1",
                           FFS_REPOSITORY__POLL_S="0.2", FFS_API_PROCESSES="1")
    try:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            shutil.copytree(tiny_repo.root / "sst2", polled / "polled" / "2")
            deadline = time.monotonic() + 30
            version = "1"
            while version != "2" and time.monotonic() < deadline:
                time.sleep(0.2)
                version = http.post("/v1/classify/polled", json={"inputs": ["fine"]}) \
                    .json()["version"]
            assert version == "2"
    finally:
        stop_server(running)


def test_a_model_a_worker_refuses_leaves_every_worker_as_it_was(tiny_repo: TinyRepo) -> None:
    folder = tiny_repo.root / "sst2"
    manifest = read_manifest(folder)
    good = ModelFile(str(folder / manifest.variants["cpu-int8"].file),
                     tuple(manifest.model_inputs), str(folder / manifest.tokenizer),
                     manifest.max_length, manifest.pad_token_id)
    core = (min(os.sched_getaffinity(0)),)
    specs = [WorkerSpec(index=i, cores=core, threads=1, models={"sst2:1": good}) for i in (0, 1)]

    async def scenario() -> tuple[str, list[list[str]], list[str], list[list[str]], int]:
        pool = WorkerPool("cpu", specs)
        await pool.start()
        try:
            with pytest.raises(WorkerError) as refused:
                await pool.load("bad:1", dataclasses.replace(good, path="/nowhere/model.onnx"))
            after_refusal = [sorted(w.loaded) for w in pool.workers]
            await pool.load("sst2:2", good)
            worker = await pool.acquire()
            rows = (await pool.run(worker, "sst2:2", ["a fine film"])).logits.shape[0]
            pool.release(worker)
            await pool.unload("sst2:2")
            return (str(refused.value), after_refusal, sorted(pool.models),
                    [sorted(w.loaded) for w in pool.workers], rows)
        finally:
            pool.stop()

    reason, after_refusal, models, after_unload, rows = asyncio.run(scenario())
    assert "refused" in reason and "/nowhere/model.onnx" in reason
    assert after_refusal == [["sst2:1"], ["sst2:1"]]
    assert rows == 1
    assert models == ["sst2:1"] and after_unload == [["sst2:1"], ["sst2:1"]]


def test_the_server_takes_kserve_flags_and_serves_one_artifact_folder(tiny_repo: TinyRepo,
                                                                      tmp_path: Path) -> None:
    import sys

    from bench import serving

    port = serving.free_port()
    process = serving.launch(
        [sys.executable, "-m", "app", "--model_name=my-classifier",
         f"--model_dir={tiny_repo.root / 'sst2'}", f"--http_port={port}"],
        f"http://127.0.0.1:{port}/v2/health/ready", tmp_path / "server.log",
        {"FFS_HOST": "127.0.0.1", "FFS_CPU_POOL__WORKERS": "1"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            answer = http.post("/v2/models/my-classifier/infer", json={"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]})
            assert answer.status_code == 200 and answer.json()["model_name"] == "my-classifier"
    finally:
        serving.stop(process)
