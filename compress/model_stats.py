"""Where a transformer's parameters and FLOPs are, from its config alone (no weights needed).

Answers the 'train large, then compress' questions: how big is bert-base / roberta-large, how much
of it is embeddings, what does a token cost at a sequence length. The model is built on the meta
device, so even roberta-large costs no memory and no download beyond config.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from compress.checkpoint import head_size_of, is_pruned_attention, set_attention_heads
from contract.artifact import Architecture

# Parameter names, first match wins: BERT/RoBERTa/MPNet/DistilBERT/ELECTRA/DeBERTa naming.
_GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("embeddings", re.compile(r"(^|\.)embeddings\.")),
    ("attention", re.compile(r"\.(attention|attn|self_attn)\.")),
    ("ffn", re.compile(r"\.(intermediate|ffn|mlp)\.|layer\.\d+\.output\.")),
)


@dataclass(frozen=True)
class ModelStats:
    """Parameter counts by group and forward FLOPs per token at `sequence_length`."""

    architecture: Architecture
    parameters: dict[str, int]
    sequence_length: int
    flops_per_token: dict[str, int]

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "architecture": self.architecture.model_dump(),
                "total_parameters": self.total_parameters,
                "total_flops_per_token": sum(self.flops_per_token.values())}


def group_of(name: str) -> str:
    """embeddings / attention / ffn / other for a parameter name."""
    for group, pattern in _GROUPS:
        if pattern.search(name):
            return group
    return "other"


def load_config(source: str | Path) -> PretrainedConfig:
    """A config from a config.json, an HF folder, an artifact (model_config.json) or a hub id."""
    path = Path(source)
    if path.is_file():
        return AutoConfig.for_model(**json.loads(path.read_text(encoding="utf-8")))
    if (path / "model_config.json").is_file():
        return load_config(path / "model_config.json")
    return AutoConfig.from_pretrained(str(source))


def _meta_model(config: PretrainedConfig) -> torch.nn.Module:
    heads, head_size = int(config.num_attention_heads), head_size_of(config)
    pruned = is_pruned_attention(config)
    if pruned:
        config = type(config).from_dict(
            {**config.to_dict(), "num_attention_heads": int(config.hidden_size) // head_size})
    with torch.device("meta"):
        has_head = bool(getattr(config, "id2label", None)) and getattr(config, "architectures", None) \
            and any("SequenceClassification" in a for a in config.architectures or [])
        model = (AutoModelForSequenceClassification if has_head else AutoModel).from_config(config)
        if pruned:
            for layer in model.base_model.encoder.layer:
                set_attention_heads(layer, heads, head_size)
    return model


def inspect_config(config: PretrainedConfig, sequence_length: int = 128) -> ModelStats:
    """Parameters by group and FLOPs per token (multiply-add = 2 FLOPs) of a config's model."""
    model = _meta_model(config)
    parameters = {"embeddings": 0, "attention": 0, "ffn": 0, "other": 0}
    for name, tensor in model.named_parameters():
        parameters[group_of(name)] += tensor.numel()
    layers = int(config.num_hidden_layers)
    heads, head_size = int(config.num_attention_heads), head_size_of(config)
    architecture = Architecture(
        model_type=str(config.model_type), layers=layers, hidden=int(config.hidden_size),
        heads=heads, head_size=head_size, ffn=_ffn_width(config),
        parameters=sum(parameters.values()))
    return ModelStats(
        architecture=architecture, parameters=parameters, sequence_length=sequence_length,
        flops_per_token=_flops_per_token(model, layers, heads * head_size, sequence_length),
    )


def _ffn_width(config: PretrainedConfig) -> int:
    # DistilBERT names it hidden_dim; the BERT family intermediate_size.
    for key in ("intermediate_size", "hidden_dim"):
        width = getattr(config, key, None)
        if width:
            return int(width)
    return 0


def _flops_per_token(model: torch.nn.Module, layers: int, attention_width: int,
                     sequence_length: int) -> dict[str, int]:
    """Every token goes through each encoder Linear once; QK^T and AV cost 2 x L x width each.

    Pooler and classifier run once per sequence, so they are spread over its tokens.
    """
    flops = {"attention_projections": 0, "attention_scores": 0, "ffn": 0, "head": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        cost = 2 * module.in_features * module.out_features
        group = group_of(name + ".")
        if group == "attention":
            flops["attention_projections"] += cost
        elif group == "ffn":
            flops["ffn"] += cost
        else:
            flops["head"] += cost // sequence_length
    flops["attention_scores"] = layers * 2 * (2 * sequence_length * attention_width)
    return flops


def format_stats(stats: ModelStats) -> str:
    """A short human-readable table."""
    total = stats.total_parameters
    shape = stats.architecture
    lines = [f"{shape.model_type}: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads "
             f"x {shape.head_size}, FFN {shape.ffn}",
             f"parameters: {total:,} ({total / 1e6:.1f}M)"]
    lines += [f"  {group:<11} {count:>13,}  {100 * count / max(1, total):5.1f}%"
              for group, count in stats.parameters.items()]
    flops_total = sum(stats.flops_per_token.values())
    lines.append(f"forward FLOPs per token at sequence length {stats.sequence_length}: "
                 f"{flops_total / 1e6:.1f}M")
    lines += [f"  {part:<22} {count / 1e6:>9.2f}M  {100 * count / max(1, flops_total):5.1f}%"
              for part, count in stats.flops_per_token.items()]
    return "\n".join(lines)
