"""Classifier checkpoints on disk: HF folders, including pruned ones transformers cannot rebuild.

After head pruning every layer keeps k heads of the original head size, so the attention width
(k x head_size) differs from the hidden size. transformers derives head_size = hidden / heads and
would build the wrong shapes, so a pruned checkpoint records `attention_head_size` in its config
and is rebuilt here: constructed at the original head count, then shrunk, then loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from contract.artifact import CompressError

HEAD_SIZE_KEY = "attention_head_size"


class CheckpointError(CompressError):
    """A checkpoint folder cannot be used as a classifier."""


# Model types whose layers have BERT's module layout (attention.self.query ... output.dense):
# structured pruning cuts these. Others still export, fuse, quantize and distil.
PRUNABLE = ("bert", "roberta", "xlm-roberta", "electra")


def layer_stack(model: PreTrainedModel) -> tuple[Any, str]:
    """The module holding an encoder's list of blocks and the attribute it is under:
    encoder.layer (BERT, RoBERTa, XLM-R, ELECTRA, MPNet, DeBERTa) or transformer.layer
    (DistilBERT). ALBERT shares one block between all layers: no list to cut."""
    base = getattr(model, model.base_model_prefix, model)
    for owner_name in ("encoder", "transformer"):
        owner = getattr(base, owner_name, None)
        if isinstance(getattr(owner, "layer", None), torch.nn.ModuleList):
            return owner, "layer"
    raise CheckpointError(
        f"{type(model).__name__} ({model.config.model_type}): no list of encoder layers to cut "
        "(ALBERT shares one layer between all depths); distillation into fewer layers and "
        "pruning are not supported for it, but compress package and build are")


def encoder_layers(model: PreTrainedModel) -> list[Any]:
    """The transformer blocks of an encoder, in order."""
    owner, name = layer_stack(model)
    # Any: attribute access on nn.Module is untyped (layer.attention.self.query ...).
    return list(getattr(owner, name))


def require_prunable(model: PreTrainedModel) -> None:
    """Refuse, with the supported list, a model whose layers pruning does not know."""
    model_type = str(model.config.model_type)
    if model_type not in PRUNABLE:
        raise CheckpointError(
            f"structured pruning supports {', '.join(PRUNABLE)}; {model_type} layers have another "
            "layout (distil it into fewer layers instead, or serve it unpruned)")


def head_size_of(config: PretrainedConfig) -> int:
    """Per-head width: recorded after pruning, else hidden / heads."""
    recorded = getattr(config, HEAD_SIZE_KEY, None)
    return int(recorded) if recorded else int(config.hidden_size) // int(config.num_attention_heads)


def ffn_size_of(config: PretrainedConfig) -> int:
    """FFN width: `intermediate_size`, or DistilBERT's `hidden_dim`."""
    size = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    if size is None:
        raise CheckpointError(f"{type(config).__name__}: no FFN width (intermediate_size or "
                              "hidden_dim) in the config")
    return int(size)


def is_pruned_attention(config: PretrainedConfig) -> bool:
    """Whether heads x head_size differs from the hidden size (transformers cannot build it)."""
    return head_size_of(config) * int(config.num_attention_heads) != int(config.hidden_size)


def set_attention_heads(layer: Any, heads: int, head_size: int) -> None:
    """Resize a BERT layer's attention to `heads` x `head_size`, keeping the hidden size.

    New projections are uninitialised; callers copy kept weights in or load a state dict.
    """
    attention = layer.attention.self
    hidden = attention.query.in_features
    width = heads * head_size
    for name in ("query", "key", "value"):
        setattr(attention, name, torch.nn.Linear(hidden, width))
    layer.attention.output.dense = torch.nn.Linear(width, hidden)
    attention.num_attention_heads = heads
    attention.attention_head_size = head_size
    attention.all_head_size = width
    attention.scaling = head_size**-0.5


def load_classifier(folder: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a classifier checkpoint (plain or pruned) with eager attention, in eval mode.

    Eager attention: SDPA returns no attention maps (distillation) and exports to ONNX in a shape
    ORT's BERT fusion does not recognise.
    """
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not is_pruned_attention(config):
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, attn_implementation="eager")
        return model.eval(), tokenizer
    heads, head_size = int(config.num_attention_heads), head_size_of(config)
    buildable = type(config).from_dict(
        {**config.to_dict(), "num_attention_heads": int(config.hidden_size) // head_size})
    buildable._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(buildable)
    for layer in encoder_layers(model):
        set_attention_heads(layer, heads, head_size)
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: pruned checkpoint without model.safetensors")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only keys (position_ids) may be absent; real weights may not.
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not fit the pruned shape "
                              f"(missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    model.config = config
    return model.eval(), tokenizer


def save_classifier(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Write model + tokenizer beside `folder`, then move them in whole.

    An interrupted save (Ctrl-C) leaves either the previous folder or none, never a half one.
    """
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON next to `path` and rename it in, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)
