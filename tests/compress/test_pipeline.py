"""The compress chain on a tiny BERT: artifact contents, fusion, fidelity of each stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compress.evaluate import predict
from compress.tasks import get_task, load_split
from contract.artifact import read_manifest, sha256_file
from tests.conftest import TinyRepo


def test_manifest_records_sha256_of_every_variant_file(tiny_repo: TinyRepo) -> None:
    folder = tiny_repo.root / "sst2"
    manifest = read_manifest(folder)
    assert set(manifest.variants) == {"fp32", "cpu-int8", "gpu-fp16"}
    for variant in manifest.variants.values():
        assert variant.sha256 == sha256_file(folder / variant.file)
        assert variant.size_bytes == (folder / variant.file).stat().st_size


def test_manifest_describes_task_labels_inputs_and_architecture(tiny_repo: TinyRepo) -> None:
    manifest = read_manifest(tiny_repo.root / "sst2")
    assert manifest.format == 1
    assert manifest.labels == ["negative", "positive"]
    assert manifest.input_kind == "single"
    assert manifest.model_inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert (manifest.architecture.layers, manifest.architecture.hidden,
            manifest.architecture.heads, manifest.architecture.ffn) == (2, 32, 2, 64)
    assert manifest.max_length == 64  # the tiny model's position limit, below the task's 128
    assert "onnxruntime" in manifest.provenance.versions


def test_pair_task_artifact_is_marked_pair(tiny_repo: TinyRepo) -> None:
    manifest = read_manifest(tiny_repo.root / "rte")
    assert manifest.input_kind == "pair"
    assert manifest.labels == ["entailment", "not_entailment"]


def test_optimizer_fuses_attention_embedding_layernorm_and_gelu(tiny_repo: TinyRepo) -> None:
    variant = read_manifest(tiny_repo.root / "sst2").variants["cpu-int8"]
    assert variant.fusions["Attention"] == 2
    assert variant.fusions["EmbedLayerNormalization"] == 1
    assert variant.fusions["SkipLayerNormalization"] >= 2
    assert variant.fusions["BiasGelu"] == 2


def test_int8_variant_runs_quantized_kernels(tiny_repo: TinyRepo) -> None:
    operators = read_manifest(tiny_repo.root / "sst2").variants["cpu-int8"].operators
    assert operators.get("QAttention") == 2
    assert operators.get("MatMulInteger", 0) + operators.get("DynamicQuantizeMatMul", 0) > 0


def test_cpu_int8_variant_runs_layer_norm_unfused_and_gpu_variant_fused(
        tiny_repo: TinyRepo) -> None:
    variants = read_manifest(tiny_repo.root / "sst2").variants
    cpu = variants["cpu-int8"].operators
    assert "SkipLayerNormalization" not in cpu
    assert cpu.get("LayerNormalization", 0) >= 2
    assert variants["gpu-fp16"].operators.get("SkipLayerNormalization", 0) >= 2


def test_export_reproduces_pytorch_logits(tiny_repo: TinyRepo) -> None:
    recipe = read_manifest(tiny_repo.root / "sst2").provenance.recipe
    assert float(recipe["export_max_abs_logit_diff"]) < 1e-4  # type: ignore[arg-type]


def test_exported_graph_has_dynamic_batch_and_sequence_axes(tiny_repo: TinyRepo) -> None:
    session = ort.InferenceSession(str(tiny_repo.root / "sst2" / "fp32" / "model.onnx"))
    for graph_input in session.get_inputs():
        assert graph_input.shape == ["batch", "sequence"]
    ids = np.array([[2, 10, 3], [2, 11, 3]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}
    assert session.run(None, feeds)[0].shape == (2, 2)


def test_finetune_learns_the_task(tiny_repo: TinyRepo) -> None:
    metrics = {m.variant: m for m in read_manifest(tiny_repo.root / "sst2").metrics}
    assert metrics["fp32"].examples == 120
    assert metrics["fp32"].value >= 0.9


@pytest.mark.parametrize("variant", ["cpu-int8", "gpu-fp16"])
def test_variant_agrees_with_fp32_on_dev_predictions(tiny_repo: TinyRepo, variant: str) -> None:
    folder = tiny_repo.root / "sst2"
    manifest = read_manifest(folder)
    dev = load_split(get_task("sst2"), "dev", tiny_repo.data_dir)

    def labels(name: str) -> list[int]:
        return predict(folder / manifest.variants[name].file, folder / "tokenizer.json",
                       dev.texts, manifest.model_inputs, manifest.max_length)

    fp32, other = labels("fp32"), labels(variant)
    agreement = sum(a == b for a, b in zip(fp32, other, strict=True)) / len(fp32)
    assert agreement >= 0.95


def test_fp16_variant_keeps_fp32_inputs_and_outputs_around_fp16_weights(
        tiny_repo: TinyRepo) -> None:
    import onnx

    folder = tiny_repo.root / "sst2"
    variant = read_manifest(folder).variants["gpu-fp16"]
    assert (variant.precision, variant.execution_provider) == ("fp16", "CUDAExecutionProvider")
    graph = onnx.load(str(folder / variant.file)).graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert variant.fusions["Attention"] == 2


def test_cli_evaluate_reports_accuracy_of_an_artifact(tiny_repo: TinyRepo,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from compress.__main__ import main

    code = main(["evaluate", str(tiny_repo.root / "sst2"), "--data-dir", str(tiny_repo.data_dir)])
    assert code == 0
    assert "sst2 cpu-int8: accuracy" in capsys.readouterr().out


def test_cli_build_reports_missing_data_clearly(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from compress.__main__ import main

    code = main(["build", "--task", "sst2", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "sst2/train.tsv does not exist" in capsys.readouterr().err


def test_manifest_json_is_plain_readable_json(tiny_repo: TinyRepo) -> None:
    raw = json.loads((tiny_repo.root / "rte" / "manifest.json").read_text())
    assert raw["task"] == "rte"
    assert raw["variants"]["cpu-int8"]["file"] == "cpu-int8/model.onnx"


def test_stage_verbs_chain_into_a_fused_int8_model(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    from compress.__main__ import main
    from compress.optimize import operator_counts

    checkpoint, exported = tmp_path / "checkpoint", tmp_path / "model.onnx"
    fused, int8 = tmp_path / "fused.onnx", tmp_path / "int8.onnx"
    assert main(["finetune", "--task", "sst2", "--model", str(tiny_repo.base_model),
                 "--data-dir", str(tiny_repo.data_dir), "--out", str(checkpoint),
                 "--max-train-examples", "64"]) == 0
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(exported)]) == 0
    assert main(["optimize", "--onnx", str(exported), "--checkpoint", str(checkpoint),
                 "--out", str(fused)]) == 0
    assert main(["quantize", "--onnx", str(fused), "--out", str(int8)]) == 0
    assert operator_counts(fused).get("Attention") == 2
    assert operator_counts(int8).get("QAttention") == 2


@pytest.mark.parametrize("error", [
    "export", "prune", "artifact", "file",
])
def test_every_compress_failure_is_one_line(error: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import compress.__main__ as cli
    from compress.export import ExportError
    from compress.prune import PruneError
    from contract.artifact import ArtifactError

    raised = {"export": ExportError("the ONNX graph's logits differ from PyTorch's by 0.2"),
              "prune": PruneError("no heads left to prune"),
              "artifact": ArtifactError("manifest.json is missing"),
              "file": FileNotFoundError(2, "No such file or directory", "data/train.tsv")}[error]

    def fail(_: object) -> int:
        raise raised

    monkeypatch.setattr(cli, "_run", fail)
    assert cli.main(["inspect", "config.json"]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and printed.startswith("error: "), printed
