"""The golden check: an artifact records its build CPU's answers and integer-kernel family; a server
whose own answers differ says so at start-up and in /v1/models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from app.core.repository import load_model_version
from contract.artifact import read_manifest, sha256_file, write_manifest
from contract.cpu_features import int8_kernel_family
from contract.golden import CPU_VARIANTS
from tests.conftest import RunningServer, TinyRepo, start_server, stop_server


def test_the_build_records_each_cpu_variants_answers_and_its_kernel_family(
        tiny_repo: TinyRepo) -> None:
    manifest = read_manifest(tiny_repo.root / "sst2")
    golden = manifest.golden
    assert golden is not None and golden.int8_kernels == int8_kernel_family()
    assert sorted(golden.logits) == sorted(CPU_VARIANTS)
    for rows in golden.logits.values():
        assert len(rows) == len(golden.texts) > 0 and len(rows[0]) == len(manifest.labels)


def test_an_unchanged_artifact_passes_its_golden_check_at_load(tiny_repo: TinyRepo) -> None:
    model = load_model_version(tiny_repo.root / "sst2", ["fp32", "cpu-int8"])
    assert set(model.golden) == {"fp32", "cpu-int8"}
    assert all(result.matches for result in model.golden.values())


def _altered_repo(tiny_repo: TinyRepo, folder: Path) -> Path:
    """A copy of the sst2 artifact whose INT8 graph answers differently than at build (its
    classifier bias moved), with the manifest's sha256 updated: what another CPU family's
    kernels could do to a graph that is byte for byte the one that was built."""
    repo = folder / "models"
    shutil.copytree(tiny_repo.root / "sst2", repo / "sst2")
    manifest = read_manifest(repo / "sst2")
    entry = manifest.variants["cpu-int8"]
    path = repo / "sst2" / entry.file
    graph = onnx.load(str(path))
    bias = next(t for t in graph.graph.initializer if "classifier" in t.name and "bias" in t.name)
    values = numpy_helper.to_array(bias).copy()
    values[0] += 5.0
    bias.CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias.name))
    onnx.save(graph, str(path))
    manifest.variants["cpu-int8"] = entry.model_copy(update={
        "sha256": sha256_file(path), "size_bytes": path.stat().st_size})
    write_manifest(repo / "sst2", manifest)
    return repo


def test_a_graph_whose_answers_changed_is_reported_at_load(tiny_repo: TinyRepo,
                                                           tmp_path: Path) -> None:
    repo = _altered_repo(tiny_repo, tmp_path)
    model = load_model_version(repo / "sst2", ["fp32", "cpu-int8"])
    assert model.golden["fp32"].matches
    changed = model.golden["cpu-int8"]
    assert not changed.matches and changed.max_abs_logit_diff > 1.0


@pytest.fixture
def altered_server(tiny_repo: TinyRepo, tmp_path: Path) -> Iterator[RunningServer]:
    repo = _altered_repo(tiny_repo, tmp_path)
    running = start_server(repo, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="1")
    yield running
    stop_server(running)


def test_a_server_whose_answers_differ_says_so_at_start_up_and_in_models(
        altered_server: RunningServer) -> None:
    card = httpx.get(f"{altered_server.url}/v1/models", timeout=10).json()
    [model] = [m for m in card["models"] if m["task"] == "sst2"]
    [golden] = [g for g in model["golden"] if g["variant"] == "cpu-int8"]
    assert golden["matches"] is False and golden["here_kernels"] == int8_kernel_family()
    assert "answers differently on this CPU" in altered_server.log()
