"""Stage 5: ONNX Runtime transformer fusion (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.transformers.optimizer import optimize_model

from compress.artifact import Architecture

# The fusions a BERT-type encoder should get; one that stays at 0 costs speed and is reported.
EXPECTED_FUSIONS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu")


@dataclass(frozen=True)
class FusionReport:
    applied: dict[str, int]
    missing: list[str]


def operator_counts(path: Path) -> dict[str, int]:
    """How many nodes of each operator type the graph has (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def optimize(in_path: Path, out_path: Path, architecture: Architecture) -> FusionReport:
    """Fuse the exported graph for ORT and report which fusions applied.

    `hidden_size` is the attention width (heads x head_size): after head pruning it differs from the
    model's hidden size, and ORT fuses Attention only when given the attention width.
    """
    optimizer = optimize_model(
        str(in_path),
        model_type="bert",
        num_heads=architecture.heads,
        hidden_size=architecture.heads * architecture.head_size,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    optimizer.save_model_to_file(str(out_path))
    stats = {name: int(count) for name, count in optimizer.get_fused_operator_statistics().items()}
    applied = {name: count for name, count in sorted(stats.items()) if count > 0}
    missing = [name for name in EXPECTED_FUSIONS if stats.get(name, 0) == 0]
    return FusionReport(applied=applied, missing=missing)
