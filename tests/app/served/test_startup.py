"""Start-up refuses what it cannot serve correctly, with a message that says what to fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.core.service import prepare_service
from app.settings import ConfigError, load_settings
from contract.artifact import read_manifest, sha256_file, write_manifest
from tests.conftest import ROOT, TinyRepo, start_server, stop_server


def _run_app(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FFS_MODEL_REPOSITORY": str(repo), "FFS_PORT": "0", **env}
    return subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


def test_a_sha256_mismatch_refuses_to_start(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    with (repo / "sst2" / "cpu-int8" / "model.onnx").open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = _run_app(repo)
    assert result.returncode == 2
    assert "sha256 mismatch" in result.stderr
    assert "refusing to load it" in result.stderr


def test_a_graph_onnxruntime_refuses_stops_start_up_with_a_message(tiny_repo: TinyRepo,
                                                                    tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    model = repo / "sst2" / "cpu-int8" / "model.onnx"
    model.write_bytes(b"not a graph")
    manifest = read_manifest(repo / "sst2")
    variants = dict(manifest.variants)
    variants["cpu-int8"] = variants["cpu-int8"].model_copy(update={"sha256": sha256_file(model)})
    write_manifest(repo / "sst2", manifest.model_copy(update={"variants": variants}))
    result = _run_app(repo)
    assert result.returncode == 2
    assert "onnxruntime cannot load this graph" in result.stderr


def test_an_empty_repository_refuses_to_start(tmp_path: Path) -> None:
    result = _run_app(tmp_path)
    assert result.returncode == 2
    assert "has no artifacts" in result.stderr
    assert "python -m compress build" in result.stderr


def test_a_missing_repository_is_a_configuration_error(tmp_path: Path) -> None:
    result = _run_app(tmp_path / "absent")
    assert result.returncode == 2
    assert "model_repository" in result.stderr
    assert "is not a folder" in result.stderr


def test_a_gpu_routed_task_falls_back_to_cpu_and_says_why(tiny_repo: TinyRepo) -> None:
    settings = load_settings(model_repository=tiny_repo.root, routing={"rte": "gpu"})
    service = prepare_service(settings)
    route = service.registry.route("rte:1")
    assert (route.requested_pool, route.pool, route.variant) == ("gpu", "cpu", "cpu-int8")
    assert route.fallback_reason and "no CUDAExecutionProvider" in route.fallback_reason
    assert service.registry.route("sst2:1").fallback_reason is None


def test_gpu_fallback_fail_refuses_to_start_a_gpu_route(tiny_repo: TinyRepo) -> None:
    settings = load_settings(model_repository=tiny_repo.root, routing={"rte": "gpu"},
                             gpu_fallback="fail")
    with pytest.raises(ConfigError, match="model 'rte' is routed to the gpu pool"):
        prepare_service(settings)


def test_routing_an_unknown_task_is_a_configuration_error(tiny_repo: TinyRepo) -> None:
    settings = load_settings(model_repository=tiny_repo.root, routing={"mnli": "cpu"})
    with pytest.raises(ConfigError, match=r"routing names model\(s\) \['mnli'\]"):
        prepare_service(settings)


def test_more_workers_than_cores_is_a_configuration_error(tiny_repo: TinyRepo) -> None:
    too_many = len(os.sched_getaffinity(0)) + 1
    settings = load_settings(model_repository=tiny_repo.root,
                             cpu_pool={"workers": too_many})
    with pytest.raises(ConfigError, match=r"lower cpu_pool\.workers"):
        prepare_service(settings)


def test_reject_policy_answers_413_for_inputs_over_max_length(tiny_repo: TinyRepo,
                                                             tmp_path: Path) -> None:
    server = start_server(tiny_repo.root, tmp_path / "server.log",
                          FFS_LIMITS__TRUNCATION="reject", FFS_CPU_POOL__WORKERS="1")
    try:
        long_text = " ".join(["the film was good"] * 40)
        response = httpx.post(f"{server.url}/v1/classify/sst2",
                              json={"inputs": ["good", long_text]}, timeout=30)
        assert response.status_code == 413
        assert "inputs [1] exceed the model's 64 tokens" in response.json()["error"]["message"]
        ok = httpx.post(f"{server.url}/v1/classify/sst2", json={"inputs": ["good"]}, timeout=30)
        assert ok.status_code == 200
    finally:
        stop_server(server)


def _broken_repo(tiny_repo: TinyRepo, tmp_path: Path) -> Path:
    """A copy of the tiny repository whose sst2 INT8 file no longer matches its sha256."""
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    with (repo / "sst2" / "cpu-int8" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    return repo


def test_a_model_whose_outputs_do_not_match_its_labels_refuses_to_start(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    manifest = json.loads((repo / "sst2" / "manifest.json").read_text())
    manifest["labels"] = ["negative", "neutral", "positive"]
    (repo / "sst2" / "manifest.json").write_text(json.dumps(manifest))
    result = _run_app(repo)
    assert result.returncode == 2
    assert "outputs 2 scores but the manifest lists 3 labels" in result.stderr


def test_two_artifacts_for_one_task_refuse_to_start(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    shutil.copytree(repo / "sst2", repo / "sst2-copy")
    result = _run_app(repo)
    assert result.returncode == 2
    assert "model 'sst2' is in both" in result.stderr


def test_a_missing_model_file_refuses_to_start(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root, repo)
    (repo / "rte" / "cpu-int8" / "model.onnx").unlink()
    result = _run_app(repo)
    assert result.returncode == 2
    assert "variant 'cpu-int8' file cpu-int8/model.onnx is missing" in result.stderr


def test_skip_mode_serves_the_healthy_tasks_and_names_the_broken_one(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    server = start_server(_broken_repo(tiny_repo, tmp_path), tmp_path / "server.log",
                          FFS_ARTIFACT_ERRORS="skip", FFS_CPU_POOL__WORKERS="1",
                          FFS_LOG_FORMAT="text")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            models = http.get("/v1/models").json()
            assert [m["task"] for m in models["models"]] == ["rte"]
            [broken] = models["unavailable"]
            assert broken["task"] == "sst2"
            assert "sha256 mismatch" in broken["error"]
            assert str(tmp_path) not in broken["error"]  # no server paths in responses
            ready = http.get("/readyz")
            assert ready.status_code == 200
            assert "sst2" in ready.json()["unavailable"]
            refused = http.post("/v1/classify/sst2", json={"inputs": ["good"]})
            assert refused.status_code == 503
            assert "its artifact failed to load" in refused.json()["error"]["message"]
            pair = http.post("/v1/classify/rte", json={"inputs": [["a good film", "it was good"]]})
            assert pair.status_code == 200
    finally:
        stop_server(server)
    assert "ERROR app.core.service [-] artifact sst2 is unavailable: " in server.log()  # text format


def test_a_chunk_stride_too_wide_for_a_task_is_a_configuration_error(tiny_repo: TinyRepo) -> None:
    settings = load_settings(model_repository=tiny_repo.root,
                             limits={"truncation": "chunk", "chunk_stride": 64})
    with pytest.raises(ConfigError, match=r"limits\.chunk_stride \(64\) must be under half of "
                                          r"task \w+'s max_length \(64\)"):
        prepare_service(settings)
