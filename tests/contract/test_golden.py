"""The golden check: an artifact records its build CPU's answers and integer-kernel family; a server
whose own answers differ acts as golden_mismatch says (serve with a warning, serve fp32, refuse)
and says so at start-up, in /v1/models and in a metric; `compress check` measures and records
what a new CPU family serves."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from prometheus_client import generate_latest

from app.core.repository import load_model_version
from app.core.service import Service, prepare_service
from app.settings import load_settings
from compress.__main__ import main as compress_main
from contract.artifact import ArtifactError, read_manifest, sha256_file, write_manifest
from contract.cpu_features import int8_kernel_family
from contract.golden import CPU_VARIANTS
from tests.conftest import RunningServer, TinyRepo, start_server, stop_server
from tests.metrics_text import sample_value

OTHER_FAMILY = "avx512-vnni" if int8_kernel_family() != "avx512-vnni" else "avx2"


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


def _foreign_golden_repo(tiny_repo: TinyRepo, folder: Path) -> Path:
    """A copy of the sst2 artifact whose recorded INT8 answers are another CPU family's, and
    differ from this CPU's: what a server sees when the build ran on another family."""
    repo = folder / "models"
    shutil.copytree(tiny_repo.root / "sst2", repo / "sst2")
    manifest = read_manifest(repo / "sst2")
    assert manifest.golden is not None
    logits = [[row[0] + 5.0, *row[1:]] for row in manifest.golden.logits["cpu-int8"]]
    manifest.golden = manifest.golden.model_copy(update={
        "int8_kernels": OTHER_FAMILY, "logits": {**manifest.golden.logits, "cpu-int8": logits}})
    write_manifest(repo / "sst2", manifest)
    return repo


def test_golden_mismatch_serve_keeps_int8_with_a_warning(
        tiny_repo: TinyRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    service = prepare_service(load_settings(model_repository=repo, golden_mismatch="serve"))
    assert service.registry.route("sst2:1").variant == "cpu-int8"
    assert "answers differently on this CPU" in caplog.text
    assert f"where its answers were recorded ({OTHER_FAMILY})" in caplog.text
    text = prometheus_text(service)
    assert sample_value(text, "ffs_golden_match", {"task": "sst2", "variant": "cpu-int8",
                                                   "served": "cpu-int8"}) == 0.0


def test_golden_mismatch_fp32_serves_the_fp32_graph_and_says_why(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    service = prepare_service(load_settings(model_repository=repo, golden_mismatch="fp32"))
    [loaded] = service.registry.serving()
    assert loaded.route.variant == "fp32" and loaded.model.cpu_variant == "fp32"
    assert "answers differently on this CPU" in (loaded.model.cpu_variant_reason or "")
    [worker] = service.specs["cpu"][:1]
    assert worker.models["sst2:1"].path.endswith("fp32/model.onnx")
    assert sample_value(prometheus_text(service), "ffs_golden_match",
                        {"task": "sst2", "variant": "cpu-int8", "served": "fp32"}) == 0.0


def test_golden_mismatch_refuse_refuses_the_version_with_the_reason(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    with pytest.raises(ArtifactError, match=r"answers differently on this CPU.*golden_mismatch: "
                                            r"refuse"):
        prepare_service(load_settings(model_repository=repo, golden_mismatch="refuse"))


def test_a_matching_artifact_serves_int8_under_every_policy(tiny_repo: TinyRepo) -> None:
    for policy in ("serve", "fp32", "refuse"):
        service = prepare_service(load_settings(model_repository=tiny_repo.root,
                                                golden_mismatch=policy))
        assert service.registry.route("sst2:1").variant == "cpu-int8", policy


def test_compress_check_records_this_cpus_accuracy_and_answers(
        tiny_repo: TinyRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    assert compress_main(["check", str(repo / "sst2"), "--task", "sst2",
                          "--data-dir", str(tiny_repo.data_dir)]) == 0
    manifest = read_manifest(repo / "sst2")
    for name in CPU_VARIANTS:
        built, checked = manifest.variants[name].validations
        assert (built.by, checked.by) == ("build", "check")
        assert checked.int8_kernels == int8_kernel_family() and checked.value == built.value
    assert [g.int8_kernels for g in manifest.golden_checked] == [int8_kernel_family()]
    assert "recorded this CPU family's golden answers" in capsys.readouterr().out
    service = prepare_service(load_settings(model_repository=repo, golden_mismatch="refuse"))
    assert service.registry.route("sst2:1").variant == "cpu-int8"


def test_compress_check_adds_no_golden_answers_where_the_recorded_ones_hold(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo.root / "sst2", repo / "sst2")
    assert compress_main(["check", str(repo / "sst2"), "--task", "sst2",
                          "--data-dir", str(tiny_repo.data_dir)]) == 0
    manifest = read_manifest(repo / "sst2")
    assert manifest.golden_checked == []
    assert [v.by for v in manifest.variants["cpu-int8"].validations] == ["build", "check"]


def test_compress_check_records_this_family_again_when_its_answers_changed(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    """The same kernel family, other answers (another runtime version, say): the check records
    what this machine answers, and the server here compares with that from then on."""
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    manifest = read_manifest(repo / "sst2")
    assert manifest.golden is not None
    manifest.golden = manifest.golden.model_copy(update={"int8_kernels": int8_kernel_family()})
    write_manifest(repo / "sst2", manifest)
    with pytest.raises(ArtifactError):
        prepare_service(load_settings(model_repository=repo, golden_mismatch="refuse"))
    assert compress_main(["check", str(repo / "sst2"), "--task", "sst2",
                          "--data-dir", str(tiny_repo.data_dir)]) == 0
    assert [g.int8_kernels for g in read_manifest(repo / "sst2").golden_checked] == \
        [int8_kernel_family()]
    service = prepare_service(load_settings(model_repository=repo, golden_mismatch="refuse"))
    assert service.registry.route("sst2:1").variant == "cpu-int8"


def prometheus_text(service: Service) -> str:
    return generate_latest(service.metrics.registry).decode()


@pytest.fixture
def fp32_server(tiny_repo: TinyRepo, tmp_path: Path) -> Iterator[RunningServer]:
    repo = _foreign_golden_repo(tiny_repo, tmp_path)
    running = start_server(repo, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="1",
                           FFS_GOLDEN_MISMATCH="fp32")
    yield running
    stop_server(running)


def test_a_server_serving_fp32_for_a_mismatch_says_so_in_models_answers_and_metrics(
        fp32_server: RunningServer) -> None:
    with httpx.Client(base_url=fp32_server.url, timeout=10) as client:
        [model] = [m for m in client.get("/v1/models").json()["models"] if m["task"] == "sst2"]
        answer = client.post("/v1/classify/sst2", json={"inputs": ["a fine film"]}).json()
        text = client.get("/metrics").text
    [golden] = [g for g in model["golden"] if g["variant"] == "cpu-int8"]
    assert golden["matches"] is False and golden["here_kernels"] == int8_kernel_family()
    assert model["variant"] == "fp32" and model["pools"] == {"cpu": "fp32"}
    assert "answers differently on this CPU" in model["cpu_variant_reason"]
    assert answer["variant"] == "fp32"
    assert sample_value(text, "ffs_golden_match", {"task": "sst2", "variant": "cpu-int8"}) == 0.0
    assert "serving its fp32 graph on the CPU pool instead" in fp32_server.log()
