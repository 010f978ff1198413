"""Stage 4: export a fine-tuned classifier to ONNX and check its logits against PyTorch."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compress.checkpoint import ffn_size_of, head_size_of, load_classifier
from compress.finetune import hf_tokenize
from contract.artifact import Architecture, CompressError

OPSET = 17
# An fp32 export differs from PyTorch only by float reassociation; more means a wrong graph.
MAX_LOGIT_DIFF = 1e-3
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


class ExportError(CompressError):
    """The ONNX graph does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    input_names: list[str]
    max_abs_diff: float
    architecture: Architecture


class _LogitsOnly(torch.nn.Module):
    """Keyword-argument wrapper: transformers 5 changed positional order of forward()."""

    def __init__(self, model: PreTrainedModel, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        logits: torch.Tensor = self.model(**kwargs).logits
        return logits


def architecture_of(model: PreTrainedModel) -> Architecture:
    """Shape of an HF encoder, read from its config and weights."""
    config = model.config
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_size = head_size_of(config)
    return Architecture(
        model_type=str(config.model_type),
        layers=int(config.num_hidden_layers),
        hidden=hidden,
        heads=heads,
        head_size=head_size,
        ffn=ffn_size_of(config),
        parameters=sum(p.numel() for p in model.parameters()),
    )


def export_onnx(model_dir: Path, out_path: Path, check_texts: list[str | tuple[str, str]]) -> \
        ExportResult:
    """Export with dynamic batch/sequence axes (TorchScript exporter, opset 17) and verify logits.

    The dynamo exporter (torch's default since 2.9) produces a graph that ORT's transformer
    optimizer cannot fuse, so the TorchScript path is chosen explicitly.
    """
    model, tokenizer = load_classifier(model_dir)
    input_names = model_inputs(model, tokenizer)
    sample = _encode(tokenizer, check_texts[:2])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _LogitsOnly(model, input_names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in input_names),
            str(out_path),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model.eval()  # export can leave modules in training mode (dropout on)
    # The graph's inputs are the truth: the exporter drops inputs the model never reads (a
    # DeBERTa-v2 without token types), and serving feeds exactly these names.
    input_names = graph_inputs(out_path)
    diff = _max_logit_diff(model, tokenizer, out_path, input_names, check_texts)
    if diff > MAX_LOGIT_DIFF:
        raise ExportError(f"{out_path}: ONNX logits differ from PyTorch by {diff:.2e}")
    return ExportResult(out_path, input_names, diff, architecture_of(model))


def model_inputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Inputs to export: what the tokenizer emits *and* the model's forward() accepts (an MPNet
    tokenizer may emit token_type_ids that MPNet has no use for), always input_ids and the mask."""
    accepted = set(inspect.signature(model.forward).parameters)
    emitted = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    return [name for name in INPUT_ORDER if name in accepted and name in emitted]


def graph_inputs(path: Path) -> list[str]:
    """Names of an ONNX graph's inputs, in graph order."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [node.name for node in session.get_inputs()]


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str | tuple[str, str]]) -> \
        dict[str, torch.Tensor]:
    return hf_tokenize(tokenizer, texts, 128, padding=True, return_tensors="pt")


def _max_logit_diff(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    onnx_path: Path,
    input_names: list[str],
    texts: list[str | tuple[str, str]],
) -> float:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = _encode(tokenizer, texts)
    with torch.no_grad():
        expected = model(**{k: batch[k] for k in input_names}).logits.numpy()
    got = session.run(["logits"], {k: batch[k].numpy() for k in input_names})[0]
    return float(np.abs(expected - got).max())
