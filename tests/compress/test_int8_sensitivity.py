"""INT8 node sensitivity: each quantizable node scored against fp32, the most sensitive kept in
fp32, batch invariance kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compress.build import Calibration, Variants, make_variants
from compress.int8_sensitivity import quantizable_nodes, sensitivity
from compress.quantize import Int8Settings, calibration_batches
from compress.tasks import get_task, load_split
from contract.predictor import OnnxPredictor
from tests.conftest import TinyRepo

SST2 = get_task("sst2")


@pytest.fixture(scope="module")
def built(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> \
        dict[int, Variants]:
    train = load_split(SST2, "train", tiny_repo.data_dir)
    calibration = Calibration(list(train.texts[:200]), "200 train texts")
    work = tmp_path_factory.mktemp("sensitivity")
    # Full 8-bit weights: with 7-bit ones (the default) this tiny model's INT8 is already within
    # fp32 noise of fp32 (logit MSE ~9e-6 on dev), too close for a sweep to show its effect.
    return {keep: make_variants(tiny_repo.sst2_teacher, work / str(keep), train.texts[:8],
                                calibration, 64, Int8Settings("static", keep, weights="s8"))
            for keep in (0, 2)}


def _predictor(graph: Path, tiny_repo: TinyRepo, names: list[str]) -> OnnxPredictor:
    return OnnxPredictor(graph, tiny_repo.sst2_teacher / "tokenizer.json", names, 64)


def test_every_quantizable_node_gets_a_score_most_sensitive_first(
        built: dict[int, Variants], tiny_repo: TinyRepo) -> None:
    made = built[0]
    nodes = quantizable_nodes(made.fused)
    assert {op for _, op in nodes} >= {"Attention", "MatMul"}
    train = load_split(SST2, "train", tiny_repo.data_dir)
    batches = list(calibration_batches(tiny_repo.sst2_teacher / "tokenizer.json",
                                       train.texts[:40], made.exported.input_names, 64))
    scores = sensitivity(made.fused, lambda: batches)
    assert sorted(s.node for s in scores) == sorted(name for name, _ in nodes)
    assert [s.mse for s in scores] == sorted((s.mse for s in scores), reverse=True)
    assert scores[0].mse > 0


def test_the_kept_nodes_stay_float_and_the_rest_is_integer(built: dict[int, Variants]) -> None:
    kept = built[2].fp32_nodes
    assert len(kept) == 2 and not built[0].fp32_nodes
    graph = onnx.load(str(built[2].int8))
    float_nodes = {n.name for n in graph.graph.node if n.op_type in ("Attention", "MatMul",
                                                                      "EmbedLayerNormalization")}
    assert set(kept) <= float_nodes
    ops = {n.op_type for n in graph.graph.node}
    assert ops & {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul"}


def test_keeping_the_sensitive_nodes_moves_int8_closer_to_fp32_and_stays_batch_invariant(
        built: dict[int, Variants], tiny_repo: TinyRepo) -> None:
    names = built[0].exported.input_names
    texts = load_split(SST2, "dev", tiny_repo.data_dir).texts
    fp32 = _predictor(built[0].fused, tiny_repo, names).logits_in_batches(texts)
    error = {}
    for keep, made in built.items():
        int8 = _predictor(made.int8, tiny_repo, names)
        batched = int8.logits_in_batches(texts, batch_size=16)
        alone = np.concatenate([int8.logits([text]) for text in texts])
        np.testing.assert_allclose(batched, alone, atol=1e-4)
        error[keep] = float(np.mean((batched - fp32) ** 2))
    assert error[2] <= error[0]
