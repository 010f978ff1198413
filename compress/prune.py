"""Structured pruning (FastFormers section 3): attention heads and FFN neurons, same ratio per layer.

A mask variable multiplies every head's context vector and every FFN neuron's activation; the
|gradient| of the loss with respect to the masks, accumulated over a data pass, scores them
(Michel et al. 2019). The top-k of each layer are kept and the weight matrices are physically cut,
keeping the per-head width, so the result is a smaller dense model that exports and fuses as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from compress.checkpoint import (
    HEAD_SIZE_KEY,
    encoder_layers,
    head_size_of,
    require_prunable,
    set_attention_heads,
)
from contract.artifact import CompressError

# loss_of(logits, batch) -> scalar loss whose gradient scores the masks.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


class PruneError(CompressError):
    """A pruning level does not fit the model."""


@dataclass(frozen=True)
class PruneLevel:
    """How many heads and FFN neurons every layer keeps."""

    heads: int
    ffn: int

    @property
    def name(self) -> str:
        return f"h{self.heads}-f{self.ffn}"

    @classmethod
    def from_ratio(cls, model: PreTrainedModel, ratio: float) -> PruneLevel:
        """Keep `ratio` of the heads and of the FFN neurons (at least one of each)."""
        heads, ffn = model_shape(model)
        return cls(heads=max(1, round(heads * ratio)), ffn=max(1, round(ffn * ratio)))


@dataclass(frozen=True)
class Importance:
    """Accumulated |d loss / d mask| per layer: heads [layers, heads], ffn [layers, neurons]."""

    heads: np.ndarray
    ffn: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, heads=self.heads, ffn=self.ffn)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Importance:
        with np.load(path) as data:
            return cls(heads=data["heads"], ffn=data["ffn"])


def model_shape(model: PreTrainedModel) -> tuple[int, int]:
    """(heads per layer, FFN neurons per layer) of a BERT-family encoder."""
    require_prunable(model)
    layer = encoder_layers(model)[0]
    return int(layer.attention.self.num_attention_heads), int(layer.intermediate.dense.out_features)


@contextmanager
def masks_applied(
    model: PreTrainedModel, head_mask: torch.Tensor, ffn_mask: torch.Tensor
) -> Iterator[None]:
    """Multiply head contexts by head_mask[layer] and FFN activations by ffn_mask[layer]."""
    head_size = head_size_of(model.config)
    handles = []
    for index, layer in enumerate(encoder_layers(model)):
        per_column = head_mask[index].repeat_interleave(head_size)
        handles.append(layer.attention.output.dense.register_forward_pre_hook(_scale(per_column)))
        handles.append(layer.output.dense.register_forward_pre_hook(_scale(ffn_mask[index])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _scale(mask: torch.Tensor) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], tuple]:
    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple:
        return (inputs[0] * mask, *inputs[1:])

    return hook


def importance_scores(
    model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]], loss_of: LossFn,
    total: int | None = None,
) -> Importance:
    """Accumulate |gradient| of the loss w.r.t. head and neuron masks over `batches`."""
    layers = len(encoder_layers(model))
    heads, ffn = model_shape(model)
    head_mask = torch.ones(layers, heads, requires_grad=True)
    ffn_mask = torch.ones(layers, ffn, requires_grad=True)
    head_scores = torch.zeros(layers, heads)
    ffn_scores = torch.zeros(layers, ffn)
    model.eval()  # dropout off: scores should reflect the model that will be pruned
    with masks_applied(model, head_mask, ffn_mask):
        for batch in tqdm(batches, total=total, desc="importance", unit="batch"):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = loss_of(model(**inputs).logits, batch)
            head_grad, ffn_grad = torch.autograd.grad(loss, [head_mask, ffn_mask])
            head_scores += head_grad.abs()
            ffn_scores += ffn_grad.abs()
    return Importance(heads=head_scores.numpy(), ffn=ffn_scores.numpy())


def kept_indices(importance: Importance, level: PruneLevel) -> tuple[list[list[int]], list[list[int]]]:
    """Per layer, the indices (ascending) of the top-`level.heads` heads and top-`level.ffn` neurons."""
    layers, heads = importance.heads.shape
    neurons = importance.ffn.shape[1]
    if not 1 <= level.heads <= heads or not 1 <= level.ffn <= neurons:
        raise PruneError(f"level {level.name} does not fit {heads} heads / {neurons} FFN neurons")
    # Stable sort on the negated scores: ties keep the lower index, so results are reproducible.
    keep_heads = [sorted(np.argsort(-importance.heads[i], kind="stable")[: level.heads].tolist())
                  for i in range(layers)]
    keep_ffn = [sorted(np.argsort(-importance.ffn[i], kind="stable")[: level.ffn].tolist())
                for i in range(layers)]
    return keep_heads, keep_ffn


def keep_masks(importance: Importance, level: PruneLevel) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 masks that switch off exactly what `prune_model` would remove."""
    keep_heads, keep_ffn = kept_indices(importance, level)
    head_mask = torch.zeros(importance.heads.shape)
    ffn_mask = torch.zeros(importance.ffn.shape)
    for index, (kept_h, kept_f) in enumerate(zip(keep_heads, keep_ffn, strict=True)):
        head_mask[index, kept_h] = 1.0
        ffn_mask[index, kept_f] = 1.0
    return head_mask, ffn_mask


def prune_model(model: PreTrainedModel, importance: Importance, level: PruneLevel) -> None:
    """Cut heads and FFN neurons out of the weight matrices in place and record the new shape."""
    require_prunable(model)
    keep_heads, keep_ffn = kept_indices(importance, level)
    head_size = head_size_of(model.config)
    with torch.no_grad():
        for layer, kept_h, kept_f in zip(encoder_layers(model), keep_heads, keep_ffn, strict=True):
            _cut_heads(layer, kept_h, head_size)
            _cut_ffn(layer, kept_f)
    model.config.num_attention_heads = level.heads
    model.config.intermediate_size = level.ffn
    setattr(model.config, HEAD_SIZE_KEY, head_size)


def _cut_heads(layer: Any, kept: list[int], head_size: int) -> None:
    columns = torch.tensor([h * head_size + i for h in kept for i in range(head_size)])
    attention = layer.attention.self
    old = {name: getattr(attention, name) for name in ("query", "key", "value")}
    old_out = layer.attention.output.dense
    set_attention_heads(layer, len(kept), head_size)
    for name, linear in old.items():
        getattr(attention, name).weight.copy_(linear.weight[columns])
        getattr(attention, name).bias.copy_(linear.bias[columns])
    layer.attention.output.dense.weight.copy_(old_out.weight[:, columns])
    layer.attention.output.dense.bias.copy_(old_out.bias)


def _cut_ffn(layer: Any, kept: list[int]) -> None:
    rows = torch.tensor(kept)
    up, down = layer.intermediate.dense, layer.output.dense
    new_up = torch.nn.Linear(up.in_features, len(kept))
    new_down = torch.nn.Linear(len(kept), down.out_features)
    new_up.weight.copy_(up.weight[rows])
    new_up.bias.copy_(up.bias[rows])
    new_down.weight.copy_(down.weight[:, rows])
    new_down.bias.copy_(down.bias)
    layer.intermediate.dense = new_up
    layer.output.dense = new_down
