"""`compress inspect`: parameters by group and FLOPs per token, from a config alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, RobertaConfig

from compress.model_stats import group_of, inspect_config, load_config
from contract.artifact import read_manifest
from tests.conftest import ROOT, TinyRepo

SMALL = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=16, max_position_embeddings=20, type_vocab_size=2)


def test_small_config_matches_hand_counted_parameters() -> None:
    stats = inspect_config(SMALL)
    h, ffn, layers = 8, 16, 2
    embeddings = 100 * h + 20 * h + 2 * h + 2 * h  # words, positions, token types, LayerNorm
    attention = layers * (3 * (h * h + h) + (h * h + h) + 2 * h)  # q, k, v, output, LayerNorm
    feed_forward = layers * ((h * ffn + ffn) + (ffn * h + h) + 2 * h)  # up, down, LayerNorm
    pooler = h * h + h
    assert stats.parameters == {"embeddings": embeddings, "attention": attention,
                                "ffn": feed_forward, "other": pooler}


def test_small_config_flops_per_token_are_two_per_multiply_add() -> None:
    stats = inspect_config(SMALL, sequence_length=10)
    h, ffn, layers, length = 8, 16, 2, 10
    assert stats.flops_per_token["attention_projections"] == layers * 2 * 4 * h * h
    assert stats.flops_per_token["ffn"] == layers * 2 * 2 * h * ffn
    assert stats.flops_per_token["attention_scores"] == layers * 2 * 2 * length * h
    assert stats.flops_per_token["head"] == 2 * h * h // length  # pooler, once per sequence


def test_bert_base_from_its_config_is_about_110m_parameters() -> None:
    stats = inspect_config(BertConfig())  # the defaults are bert-base-uncased
    assert stats.total_parameters == 109_482_240
    assert stats.parameters["embeddings"] == 23_837_184
    assert 0.5 < stats.parameters["ffn"] / stats.total_parameters < 0.55


def test_roberta_large_from_its_config_is_about_355m_parameters() -> None:
    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                           hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096)
    assert inspect_config(config).total_parameters == pytest.approx(355.4e6, rel=1e-3)


@pytest.mark.parametrize(("name", "group"), [
    ("bert.embeddings.word_embeddings.weight", "embeddings"),
    ("bert.encoder.layer.3.attention.self.query.weight", "attention"),
    ("bert.encoder.layer.3.attention.output.dense.bias", "attention"),
    ("bert.encoder.layer.3.intermediate.dense.weight", "ffn"),
    ("bert.encoder.layer.3.output.dense.weight", "ffn"),
    ("distilbert.transformer.layer.0.ffn.lin1.weight", "ffn"),
    ("mpnet.encoder.layer.0.attention.attn.q.weight", "attention"),
    ("classifier.weight", "other"),
])
def test_parameter_names_fall_into_their_groups(name: str, group: str) -> None:
    assert group_of(name) == group


def test_artifact_is_inspected_from_its_model_config(tiny_repo: TinyRepo) -> None:
    folder = tiny_repo.root / "sst2"
    stats = inspect_config(load_config(folder))
    assert stats.total_parameters == read_manifest(folder).architecture.parameters


def test_inspect_command_prints_json_for_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL.to_dict()), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "compress", "inspect", str(path), "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout)["total_parameters"] == inspect_config(SMALL).total_parameters


def test_distilbert_config_with_its_own_key_names_is_inspected() -> None:
    from transformers import DistilBertConfig

    stats = inspect_config(DistilBertConfig())
    assert stats.architecture.ffn == 3072 and stats.architecture.layers == 6
    assert stats.total_parameters == pytest.approx(66.4e6, rel=1e-3)
