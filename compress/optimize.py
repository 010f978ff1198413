"""Stage 5: ONNX Runtime transformer fusion (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm).

The CPU graphs then have their SkipLayerNormalization split again (`split_skip_layer_norm`): on a
CPU that fused kernel is slower than the ops it replaces.

ORT's optimizer has one set of encoder patterns (model_type "bert", as optimum uses for every
encoder family); what each family gets out of it differs, and is written down here per model type
so that a fusion that should apply and did not is reported, and one that cannot apply says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from contract.artifact import Architecture

_BERT_FUSIONS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu")
_POSITION_FROM_IDS = ("position ids are computed from input_ids (padding-aware cumulative sum), "
                      "which ORT's embedding fusion does not match; the embeddings run unfused")


@dataclass(frozen=True)
class FusionProfile:
    """The fusions a model type should get from ORT, and those it cannot get (with why)."""

    expected: tuple[str, ...]
    unsupported: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, FusionProfile] = {
    "bert": FusionProfile(_BERT_FUSIONS),
    "distilbert": FusionProfile(_BERT_FUSIONS),
    "electra": FusionProfile(_BERT_FUSIONS),
    "roberta": FusionProfile(_BERT_FUSIONS[1:], {"EmbedLayerNormalization": _POSITION_FROM_IDS}),
    "xlm-roberta": FusionProfile(_BERT_FUSIONS[1:],
                                 {"EmbedLayerNormalization": _POSITION_FROM_IDS}),
    "albert": FusionProfile(
        ("Attention", "SkipLayerNormalization", "FastGelu"),
        {"EmbedLayerNormalization": "ALBERT projects its factorised embeddings to the hidden "
                                    "size before the encoder, outside ORT's embedding pattern",
         "BiasGelu": "ALBERT's gelu_new fuses as FastGelu instead"}),
    "mpnet": FusionProfile(
        ("SkipLayerNormalization", "BiasGelu"),
        {"Attention": "MPNet adds a relative position bias to the attention scores, which ORT's "
                      "Attention fusion does not match; attention runs as MatMul/Softmax ops",
         "EmbedLayerNormalization": _POSITION_FROM_IDS}),
    "deberta-v2": FusionProfile(
        ("SkipLayerNormalization", "BiasGelu"),
        {"Attention": "DeBERTa's disentangled (content-to-position) attention has no fused ORT "
                      "kernel; attention runs as MatMul/Softmax ops",
         "EmbedLayerNormalization": "DeBERTa-v2 has no position embeddings in its embedding "
                                    "layer, outside ORT's embedding pattern"}),
}


@dataclass(frozen=True)
class FusionReport:
    applied: dict[str, int]
    missing: list[str]
    unsupported: dict[str, str] = field(default_factory=dict)


def profile_of(model_type: str) -> FusionProfile:
    """A model type's fusion profile; unknown types are expected to fuse like BERT (and are
    reported where they do not)."""
    return PROFILES.get(model_type, FusionProfile(_BERT_FUSIONS))


def operator_counts(path: Path) -> dict[str, int]:
    """How many nodes of each operator type the graph has (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def optimize(in_path: Path, out_path: Path, architecture: Architecture) -> FusionReport:
    """Fuse the exported graph for ORT and report which fusions applied.

    `hidden_size` is the attention width (heads x head_size): after head pruning it differs from the
    model's hidden size, and ORT fuses Attention only when given the attention width.
    """
    options = FusionOptions("bert")
    optimizer = optimize_model(
        str(in_path),
        model_type="bert",
        num_heads=architecture.heads,
        hidden_size=architecture.heads * architecture.head_size,
        optimization_options=options,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    optimizer.save_model_to_file(str(out_path))
    stats = {name: int(count) for name, count in optimizer.get_fused_operator_statistics().items()}
    applied = {name: count for name, count in sorted(stats.items()) if count > 0}
    profile = profile_of(architecture.model_type)
    missing = [name for name in profile.expected if stats.get(name, 0) == 0]
    unsupported = {name: why for name, why in profile.unsupported.items()
                   if stats.get(name, 0) == 0}
    return FusionReport(applied=applied, missing=missing, unsupported=unsupported)


# How the build writes CPU graphs; part of the cache key of built variants, so a cached graph of
# an older form is built again.
CPU_GRAPH_FORM = "skip-layer-norm-split"
# LayerNormalization entered the default ONNX domain at opset 17.
_LAYER_NORM_OPSET = 17


def split_skip_layer_norm(path: Path) -> int:
    """Rewrite, in place, every SkipLayerNormalization of a graph that runs on the CPU as
    Add (bias) + Add (skip) + LayerNormalization; returns how many were split.

    ORT's CPU SkipLayerNormalization kernel is a scalar loop with a division per element: 50 us on
    a 25x384 block where LayerNormalization takes 7 (ORT 1.31; a third of the Table 3 student's
    time at batch 1, docs/benchmarks-log.md). The same arithmetic (sum, then row normalisation), so
    labels do not change and each row is still computed on its own (batch-invariant). CPU sessions
    keep ORT from fusing them back at load (contract/session.py); the GPU graph keeps the fused
    kernel, which is fast on CUDA.
    """
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _LAYER_NORM_OPSET:
        return 0
    nodes: list[onnx.NodeProto] = []
    split = 0
    for node in model.graph.node:
        if node.op_type == "SkipLayerNormalization" and node.domain == "com.microsoft":
            nodes.extend(_unfused(node))
            split += 1
        else:
            nodes.append(node)
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return split


def _unfused(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """One SkipLayerNormalization (input, skip, gamma, beta?, bias?) as plain ONNX ops. Its
    optional outputs map onto LayerNormalization's (mean, inverse std) and the skip sum."""
    inputs = list(node.input) + [""] * (5 - len(node.input))
    x, skip, gamma, beta, bias = inputs[:5]
    outputs = list(node.output) + [""] * (4 - len(node.output))
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    name = node.name or outputs[0]
    ops = []
    if bias:
        ops.append(helper.make_node("Add", [x, bias], [f"{name}_biased"], name=f"{name}_bias"))
        x = f"{name}_biased"
    total = outputs[3] or f"{name}_sum"
    ops.append(helper.make_node("Add", [x, skip], [total], name=f"{name}_skip"))
    norm_inputs = [total, gamma] + ([beta] if beta else [])
    norm_outputs = [outputs[0], *outputs[1:3]]
    while norm_outputs and not norm_outputs[-1]:
        norm_outputs.pop()
    ops.append(helper.make_node("LayerNormalization", norm_inputs, norm_outputs,
                                name=f"{name}_norm", axis=-1, epsilon=epsilon))
    return ops
