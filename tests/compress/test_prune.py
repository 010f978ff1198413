"""Structured pruning: what is removed, what the pruned model computes, and that it still ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.checkpoint import load_classifier, save_classifier
from compress.export import export_onnx
from compress.optimize import operator_counts, optimize
from compress.prune import (
    Importance,
    PruneError,
    PruneLevel,
    importance_scores,
    keep_masks,
    kept_indices,
    masks_applied,
    prune_model,
)
from compress.quantize import quantize_int8
from tests.conftest import TinyRepo, build_tiny_bert

LAYERS, HEADS, HEAD_SIZE, FFN = 2, 4, 8, 64


def _model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=HEADS * HEAD_SIZE, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN,
                        max_position_embeddings=32, attn_implementation="eager")
    return BertForSequenceClassification(config).eval()


def _inputs(seed: int = 1, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _random_importance(seed: int = 2) -> Importance:
    rng = np.random.default_rng(seed)
    return Importance(heads=rng.random((LAYERS, HEADS)), ffn=rng.random((LAYERS, FFN)))


def test_pruning_keeps_exactly_the_top_heads_and_neurons_of_every_layer() -> None:
    model, importance = _model(), _random_importance()
    level = PruneLevel(heads=3, ffn=40)
    prune_model(model, importance, level)
    keep_heads, keep_ffn = kept_indices(importance, level)
    for index, layer in enumerate(model.bert.encoder.layer):
        assert keep_heads[index] == sorted(np.argsort(-importance.heads[index])[:3].tolist())
        assert layer.attention.self.query.out_features == 3 * HEAD_SIZE
        assert layer.attention.self.value.out_features == 3 * HEAD_SIZE
        assert layer.attention.output.dense.in_features == 3 * HEAD_SIZE
        assert layer.intermediate.dense.out_features == 40
        assert layer.output.dense.in_features == 40
        assert len(keep_ffn[index]) == 40
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (3, 40)


def test_pruned_model_computes_what_the_masked_unpruned_model_computes() -> None:
    original, pruned = _model(), _model()
    importance, level = _random_importance(), PruneLevel(heads=2, ffn=24)
    head_mask, ffn_mask = keep_masks(importance, level)
    inputs = _inputs()
    with torch.no_grad(), masks_applied(original, head_mask, ffn_mask):
        expected = original(**inputs).logits
    prune_model(pruned, importance, level)
    with torch.no_grad():
        got = pruned(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_pruning_changes_outputs_unlike_an_identity_mask() -> None:
    """The equality above is not vacuous: dropping heads does change the logits."""
    original, pruned = _model(), _model()
    prune_model(pruned, _random_importance(), PruneLevel(heads=1, ffn=8))
    with torch.no_grad():
        assert not torch.allclose(original(**_inputs()).logits, pruned(**_inputs()).logits,
                                  atol=1e-4)


def test_pruned_checkpoint_reloads_with_the_same_outputs(tmp_path: Path) -> None:
    base = build_tiny_bert(tmp_path / "base", heads=4)
    model, tokenizer = load_classifier(base)
    prune_model(model, _random_importance_for(model), PruneLevel(heads=3, ffn=40))
    save_classifier(model, tokenizer, tmp_path / "pruned")
    reloaded, _ = load_classifier(tmp_path / "pruned")
    inputs = dict(tokenizer(["the movie was good", "dull plot"], padding=True,
                            return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    assert reloaded.bert.encoder.layer[0].attention.self.query.out_features == 3 * HEAD_SIZE


def _random_importance_for(model: BertForSequenceClassification) -> Importance:
    layers = model.config.num_hidden_layers
    heads, ffn = model.config.num_attention_heads, model.config.intermediate_size
    rng = np.random.default_rng(3)
    return Importance(heads=rng.random((layers, heads)), ffn=rng.random((layers, ffn)))


def test_pruned_model_exports_fuses_attention_and_quantizes(tmp_path: Path) -> None:
    """3 of 4 heads: attention width 24 != hidden 32, and ORT still fuses Attention."""
    base = build_tiny_bert(tmp_path / "base", heads=4)
    model, tokenizer = load_classifier(base)
    prune_model(model, _random_importance_for(model), PruneLevel(heads=3, ffn=40))
    save_classifier(model, tokenizer, tmp_path / "pruned")
    texts: list[str | tuple[str, str]] = ["the plot was dull", "a wonderful and moving film"]
    exported = export_onnx(tmp_path / "pruned", tmp_path / "fp32.onnx", texts)
    assert (exported.architecture.heads, exported.architecture.head_size) == (3, HEAD_SIZE)
    fusion = optimize(exported.path, tmp_path / "fused.onnx", exported.architecture)
    assert fusion.applied.get("Attention") == 2
    quantize_int8(tmp_path / "fused.onnx", tmp_path / "int8.onnx")
    assert operator_counts(tmp_path / "int8.onnx").get("QAttention") == 2
    feeds = {k: v.numpy() for k, v in tokenizer(texts, padding=True, return_tensors="pt").items()}
    fused = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(fused.run(None, feeds)[0], expected, atol=1e-4)


def test_importance_ranks_a_useless_head_last() -> None:
    model = _model()
    with torch.no_grad():  # head 1 of layer 0 attends to values that are all zero
        value = model.bert.encoder.layer[0].attention.self.value
        value.weight[HEAD_SIZE : 2 * HEAD_SIZE] = 0.0
        value.bias[HEAD_SIZE : 2 * HEAD_SIZE] = 0.0
    batches = [{**_inputs(seed), "labels": torch.tensor([0, 1, 1, 0])} for seed in range(4)]

    def loss_of(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, batch["labels"])

    scores = importance_scores(model, batches, loss_of)
    assert int(np.argmin(scores.heads[0])) == 1
    assert scores.heads[0, 1] == 0.0
    assert (np.delete(scores.heads[0], 1) > 0).all()
    assert scores.ffn.shape == (LAYERS, FFN) and (scores.ffn > 0).any()


def test_importance_scores_round_trip_through_a_file(tmp_path: Path) -> None:
    scores = _random_importance()
    scores.save(tmp_path / "importance.npz")
    loaded = Importance.load(tmp_path / "importance.npz")
    np.testing.assert_array_equal(loaded.heads, scores.heads)
    np.testing.assert_array_equal(loaded.ffn, scores.ffn)


def test_a_level_larger_than_the_model_is_refused() -> None:
    with pytest.raises(PruneError, match="does not fit"):
        prune_model(_model(), _random_importance(), PruneLevel(heads=HEADS + 1, ffn=FFN))


def test_ratio_levels_round_and_keep_at_least_one() -> None:
    model = _model()
    assert PruneLevel.from_ratio(model, 0.5) == PruneLevel(heads=2, ffn=32)
    assert PruneLevel.from_ratio(model, 0.01) == PruneLevel(heads=1, ffn=1)


def test_prune_command_writes_a_smaller_distilled_checkpoint(tiny_repo: TinyRepo,
                                                             tmp_path: Path) -> None:
    from compress.__main__ import main

    out = tmp_path / "pruned"
    assert main(["prune", "--task", "sst2", "--checkpoint", str(tiny_repo.sst2_teacher),
                 "--teacher", str(tiny_repo.sst2_teacher), "--heads", "1", "--ffn", "16",
                 "--importance-examples", "64", "--data-dir", str(tiny_repo.data_dir),
                 "--out", str(out), "--max-train-examples", "64", "--batch-size", "16"]) == 0
    model, _ = load_classifier(out)
    layer = model.bert.encoder.layer[0]
    assert (layer.attention.self.num_attention_heads, layer.intermediate.dense.out_features) == \
        (1, 16)


def _hidden_gap(pruned: Path, unpruned: Path, texts: list[str]) -> float:
    """Mean squared distance of the last hidden states, pruned against unpruned."""
    from compress.distill import hidden_loss

    small, tokenizer = load_classifier(pruned)
    large, _ = load_classifier(unpruned)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = small(**batch, output_hidden_states=True).hidden_states[-1]
        target = large(**batch, output_hidden_states=True).hidden_states[-1]
    return float(hidden_loss(own, target, batch["attention_mask"]))


def test_a_pruned_level_learns_the_hidden_states_of_the_unpruned_student(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    """Logits from a teacher whose tokenizer does not line up (no layer transfer from it), hidden
    states from the unpruned checkpoint: the pruned student moves toward the latter's."""
    from compress.distill import DistilConfig, DistilError
    from compress.pipeline import prune_checkpoint
    from compress.tasks import get_task, load_split

    teacher = build_tiny_bert(tmp_path / "teacher", char_level=True)
    unpruned = tiny_repo.sst2_teacher
    train = load_split(get_task("sst2"), "train", tiny_repo.data_dir).head(128)
    level = PruneLevel(heads=1, ffn=16)
    logits_only = DistilConfig(epochs=3, batch_size=16, learning_rate=2e-3, max_length=64)
    layered = DistilConfig(epochs=3, batch_size=16, learning_rate=2e-3, max_length=64,
                           hidden_weight=1.0)
    plain = prune_checkpoint(unpruned, teacher, train, level, 64, logits_only, tmp_path / "plain")
    guided = prune_checkpoint(unpruned, teacher, train, level, 64, layered, tmp_path / "guided")
    texts = [str(t) for t in train.texts[:32]]
    assert _hidden_gap(guided, unpruned, texts) < 0.5 * _hidden_gap(plain, unpruned, texts)
    with pytest.raises(DistilError, match="token-aligned"):
        prune_checkpoint(unpruned, teacher, train, level, 64, layered, tmp_path / "from-teacher",
                         layers_from_student=False)
