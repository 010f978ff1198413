"""The GPU pool for real, on the CPU provider (gpu_pool.providers): its worker process runs the
gpu-fp16 graph with IO binding, beside the CPU pool; routing by task and by length, a crash and its
restart with rows spilling meanwhile, shutdown, and start-up without CUDA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compress.tasks import get_task, load_split
from contract.artifact import read_manifest
from contract.predictor import OnnxPredictor
from tests.conftest import ROOT, RunningServer, TinyRepo, start_server, stop_server
from tests.metrics_text import sample

LONG_PAIR = [" ".join(["the committee approved the new budget after a long debate"] * 3),
             "was the budget approved"]
SHORT_PAIR = ["it rained", "was it wet"]
GPU_ON_CPU = {
    "FFS_GPU_POOL__PROVIDERS": '["CPUExecutionProvider"]',
    "FFS_ROUTING": json.dumps({"sst2": "gpu", "rte": "hybrid"}),
    "FFS_GPU_POOL__MIN_LENGTH": "24",
    "FFS_CPU_POOL__WORKERS": "1",
}


@pytest.fixture(scope="module")
def gpu_server(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[RunningServer]:
    running = start_server(tiny_repo.root, tmp_path_factory.mktemp("gpu") / "server.log",
                           **GPU_ON_CPU)
    yield running
    stop_server(running)


@pytest.fixture
def http(gpu_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gpu_server.url, timeout=30.0) as client:
        yield client


def _pool(http: httpx.Client, name: str) -> dict[str, Any]:
    return next(p for p in http.get("/v1/pools").json()["pools"] if p["name"] == name)


def _dev_texts(tiny_repo: TinyRepo) -> list[str]:
    return [str(text) for text in load_split(get_task("sst2"), "dev", tiny_repo.data_dir).texts]


def _predictor(tiny_repo: TinyRepo, variant: str, io_binding: bool = False) -> OnnxPredictor:
    folder = tiny_repo.root / "sst2"
    manifest = read_manifest(folder)
    return OnnxPredictor(folder / manifest.variants[variant].file, folder / manifest.tokenizer,
                         manifest.model_inputs, manifest.max_length, manifest.pad_token_id,
                         threads=1, io_binding=io_binding)


def test_the_gpu_pool_runs_its_own_worker_beside_the_cpu_pool(http: httpx.Client) -> None:
    gpu, cpu = _pool(http, "gpu"), _pool(http, "cpu")
    assert (gpu["variant"], gpu["ready"]) == ("gpu-fp16", True)
    assert gpu["workers"][0]["providers"] == ["CPUExecutionProvider"]
    assert cpu["variant"] == "cpu-int8"
    assert gpu["workers"][0]["pid"] not in [w["pid"] for w in cpu["workers"]]


def test_a_gpu_routed_task_answers_with_the_fp16_graphs_labels(
        http: httpx.Client, tiny_repo: TinyRepo) -> None:
    texts = _dev_texts(tiny_repo)[:48]
    response = http.post("/v1/classify/sst2", json={"inputs": texts[:16]})
    answers = [response] + [http.post("/v1/classify/sst2", json={"inputs": texts[i : i + 16]})
                            for i in (16, 32)]
    assert {a.json()["variant"] for a in answers} == {"gpu-fp16"}
    served = [r["label"] for a in answers for r in a.json()["results"]]
    labels = read_manifest(tiny_repo.root / "sst2").labels
    fp16 = _predictor(tiny_repo, "gpu-fp16").logits_in_batches(texts).argmax(axis=1)
    assert served == [labels[i] for i in fp16]


def test_the_fp16_graph_agrees_with_fp32(tiny_repo: TinyRepo) -> None:
    texts = _dev_texts(tiny_repo)
    fp16 = _predictor(tiny_repo, "gpu-fp16").logits_in_batches(texts)
    fp32 = _predictor(tiny_repo, "fp32").logits_in_batches(texts)
    assert np.abs(fp16 - fp32).max() < 0.05
    assert (fp16.argmax(axis=1) == fp32.argmax(axis=1)).mean() >= 0.98


def test_io_binding_gives_the_logits_session_run_gives(tiny_repo: TinyRepo) -> None:
    texts = _dev_texts(tiny_repo)[:40]
    bound = _predictor(tiny_repo, "gpu-fp16", io_binding=True).logits(texts)
    plain = _predictor(tiny_repo, "gpu-fp16").logits(texts)
    np.testing.assert_array_equal(bound, plain)


def test_a_hybrid_task_routes_inputs_by_their_length(http: httpx.Client) -> None:
    body = http.post("/v1/classify/rte", json={"inputs": [SHORT_PAIR, LONG_PAIR]}).json()
    assert body["variant"] == "mixed"
    assert [r["variant"] for r in body["results"]] == ["cpu-int8", "gpu-fp16"]
    gpu_rows = sample(http, "ffs_batch_size_sum", pool="gpu")
    http.post("/v1/classify/rte", json={"inputs": [LONG_PAIR]})
    assert sample(http, "ffs_batch_size_sum", pool="gpu") == gpu_rows + 1


def test_a_crashed_gpu_worker_is_restarted_and_rows_spill_to_the_cpu_meanwhile(
        http: httpx.Client) -> None:
    victim = _pool(http, "gpu")["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    variants = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = http.post("/v1/classify/sst2", json={"inputs": ["a fine film"]})
        assert response.status_code == 200, response.text  # no request is lost meanwhile
        variants.add(response.json()["variant"])
        gpu = _pool(http, "gpu")
        if gpu["ready"] and gpu["restarts"] >= 1 and "cpu-int8" in variants:
            break
        time.sleep(0.02)
    assert "cpu-int8" in variants
    assert gpu["workers"][0]["pid"] != victim
    assert http.post("/v1/classify/sst2", json={"inputs": ["a fine film"]}).json()["variant"] \
        == "gpu-fp16"
    assert sample(http, "ffs_rows_spilled_total", task="sst2", from_pool="gpu", to_pool="cpu",
                  reason="down") >= 1
    assert sample(http, "ffs_worker_restarts_total", pool="gpu") >= 1


def test_shutdown_stops_the_gpu_worker(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    running = start_server(tiny_repo.root, tmp_path / "server.log", **GPU_ON_CPU)
    with httpx.Client(base_url=running.url, timeout=30.0) as client:
        pid = _pool(client, "gpu")["workers"][0]["pid"]
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_without_cuda_and_gpu_fallback_fail_the_server_says_what_to_install(
        tiny_repo: TinyRepo) -> None:
    env = {**os.environ, "FFS_MODEL_REPOSITORY": str(tiny_repo.root), "FFS_PORT": "0",
           "FFS_ROUTING": '{"sst2": "gpu"}', "FFS_GPU_FALLBACK": "fail"}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no CUDAExecutionProvider" in result.stderr
    assert "pip install '.[serve,gpu]'" in result.stderr


def _write_boolq(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sentence = "the river rises in the hills and runs to the sea past the old town"
    lines = [json.dumps({"question": f"does the river reach the sea {i}", "title": "River",
                         "passage": " ".join([sentence] * (1 + i % 4)), "answer": i % 2 == 0})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_the_gpu_check_runs_end_to_end_on_the_cpu_provider(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    (data / "sst2" / "dev.tsv").write_text((tiny_repo.data_dir / "sst2" / "dev.tsv").read_text())
    _write_boolq(data / "boolq" / "val.jsonl", 40)
    out = tmp_path / "out"
    quick = (f"--data-dir {data} --seconds 0.3 --batches 4 --max-length 64 --dev-texts 32 "
             "--max-rate 8 --slo-ms 500")
    env = {**os.environ, "PROVIDER": "cpu", "OUT": str(out), "GPU_CHECK_ARGS": quick}
    result = subprocess.run(["deploy/gpu-check.sh", str(tiny_repo.root / "sst2")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert "dry run on the CPU provider: not GPU figures" in report
    figures = {r["layout"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(figures) == ["gpu-fp16", "gpu-fp32", "cpu-int8", "hybrid"]
    for layout in ("gpu-fp16", "gpu-fp32", "cpu-int8"):
        assert figures[layout]["kinds"]["boolq"]["batch1_per_s"] > 0
        assert figures[layout]["accuracy"] is not None
    assert figures["hybrid"]["capacity_steps"]
    assert "gpu-fp16 serves the fp32 graph's label on" in report
    assert figures["gpu-fp16"]["batch1_texts"] == 32  # --dev-texts 32, each also sent alone
    assert "get the same label sent alone as in requests of 32" in report
